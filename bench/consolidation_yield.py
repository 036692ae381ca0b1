"""A batch posted while a consolidation trains, with yielding off and on, side by side in
one run: seconds from posting the batch to its publish, and to the consolidation's.

    LORAMEM_REDIS_URL=redis://127.0.0.1:6392/7 .venv/bin/python -m bench.consolidation_yield

Each arm builds the same tenant afresh: a module of `--held` PhoneBook facts and two
deltas of `--delta` facts each (published one after another), then queues the module's
consolidation and, once it has trained `--after-steps` steps, posts a batch of `--delta`
new facts. An in-process worker on the real base model runs every job (PEFT training,
the recall gate, the publish into Redis; no engine is needed, engines fetch versions from
Redis); its idle scan queues a yielded consolidation again. `off` is
LORAMEM_CONSOLIDATE_YIELD=false (the consolidation runs to its end first); `on` is the
default.
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial

from loramem.datasets import phonebook
from loramem.engine import EngineClient
from loramem.registry import Registry
from loramem.registry.jobs import TERMINAL
from loramem.settings import Settings, get_settings
from trainer.worker import Worker

POLL_S = 0.2


def wait_for(*conditions: Callable[[], bool], timeout_s: float = 3600.0) -> list[float]:
    """Seconds until each of `conditions` first held, waiting for them all."""
    started = time.monotonic()
    times: list[float | None] = [None] * len(conditions)
    while None in times:
        if time.monotonic() - started > timeout_s:
            raise TimeoutError("the bench's jobs did not finish in time")
        for n, condition in enumerate(conditions):
            if times[n] is None and condition():
                times[n] = time.monotonic() - started
        time.sleep(POLL_S)
    return [t or 0.0 for t in times]


def run_arm(settings: Settings, held: list[str], deltas: list[list[str]], batch: list[str],
            after_steps: int) -> dict:  # fmt: skip
    registry = Registry.from_settings(settings)
    worker = Worker(settings, registry, [EngineClient(settings.engine_url)])
    tenant = f"bench-yield-{uuid.uuid4().hex[:8]}"
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    try:

        def post(texts: list[str]) -> str:
            job, _ids = registry.facts.add(tenant, texts, [None] * len(texts), [b""] * len(texts))
            return job.id

        def ended(job_id: str) -> bool:
            return registry.jobs.get(job_id).status in TERMINAL

        first = post(held)
        wait_for(lambda: ended(first))
        parent = registry.jobs.get(first).module
        for texts in deltas:
            wait_for(partial(ended, post(texts)))
        consolidation = registry.facts.queue_consolidation(parent, tenant)
        assert consolidation is not None
        wait_for(lambda: registry.jobs.get(consolidation.id).progress.get("step", 0) >= after_steps)
        added = post(batch)
        batch_s, consolidated_s = wait_for(
            partial(ended, added), lambda: (registry.modules.get(parent).active_version or 0) >= 2
        )
        return {
            "batch_s": batch_s,
            "batch_status": registry.jobs.get(added).status.value,
            "consolidated_s": consolidated_s,
            "first_run": registry.jobs.get(consolidation.id).status.value,
            "held_at_end": registry.modules.get(parent).fact_count,
        }
    finally:
        worker.stop()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--held", type=int, default=16)
    parser.add_argument("--delta", type=int, default=4)
    parser.add_argument("--after-steps", type=int, default=3)
    parser.add_argument("--arms", default="off,on")
    args = parser.parse_args()
    settings = get_settings().model_copy(
        update={"consolidate_deltas": 2, "consolidate_after_s": 3600.0}
    )
    people = [p.fact for p in phonebook(settings.data_dir, args.held + 3 * args.delta, 1300)]
    held, rest = people[: args.held], people[args.held :]
    deltas = [rest[: args.delta], rest[args.delta : 2 * args.delta]]
    batch = rest[2 * args.delta :]
    print(
        "| yield | batch posted -> published (s) | batch job | consolidation published (s) "
        "| first consolidation | module facts at end | batch vs off |"
    )
    print("|---|---|---|---|---|---|---|")
    baseline = None
    for arm in args.arms.split(","):
        arm_settings = settings.model_copy(update={"consolidate_yield": arm == "on"})
        row = run_arm(arm_settings, held, deltas, batch, args.after_steps)
        baseline = baseline or row["batch_s"]
        print(
            f"| {arm} | {row['batch_s']:.1f} | {row['batch_status']} | {row['consolidated_s']:.1f} "
            f"| {row['first_run']} | {row['held_at_end']} | {row['batch_s'] / baseline:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
