"""A batch with one fact that will not stick, with the per-fact gate off and on, side by
side in one run: seconds from posting to the publish of the other facts, and to the end
of the stubborn fact (its job published or failed).

    LORAMEM_REDIS_URL=redis://127.0.0.1:6392/7 .venv/bin/python -m bench.stubborn_fact \\
      --facts 20

Each arm posts the same batch into a fresh tenant: `--facts` PhoneBook facts (rows from
1200) and one that will not stick beside them: a second phone number for the first
person (one module answers the question one way; a long random code was learnt within a
round, so it did not make a fact stubborn). An in-process worker on the real
base model runs every job the batch leads to (PEFT training with the default recipe, the
recall gate, the publish into Redis; no engine is needed, engines fetch versions from
Redis). `off` is the gate before the per-fact gate (LORAMEM_GATE_MOVE_OUT_FRACTION=0:
extra rounds over every fact); `on` is the default (the missed fact moves out to a job of
its own). Facts are stored without embeddings: no gateway or router is involved.
"""

from __future__ import annotations

import argparse
import time
import uuid

from loramem.datasets import PhoneEntry, phonebook
from loramem.engine import EngineClient
from loramem.registry import Registry
from loramem.registry.jobs import TERMINAL, Job
from loramem.settings import Settings, get_settings
from trainer.worker import Worker


def stubborn_fact(first: PhoneEntry) -> str:
    return f"The phone number of {first.name} is 555-014-2387."


def run_arm(settings: Settings, texts: list[str]) -> dict:
    registry = Registry.from_settings(settings)
    worker = Worker(settings, registry, [EngineClient(settings.engine_url)])
    tenant = f"bench-stubborn-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    first, ids = registry.facts.add(tenant, texts, [None] * len(texts), [b""] * len(texts))
    finished: dict[str, float] = {}
    while open_jobs := registry.jobs.open_of_tenant(tenant):
        worker.run_once()
        for job_id in {j.id for j in open_jobs} - set(finished):
            if registry.jobs.get(job_id).status in TERMINAL:
                finished[job_id] = time.monotonic() - started
    jobs = [registry.jobs.get(j) for j in finished]
    # The pair's fact that no version recalls ends wherever it was moved (or not).
    modules = {registry.facts.get(tenant, f).module for f in (ids[0], ids[-1])}
    holder = max((j for j in jobs if j.module in modules), key=lambda j: finished[j.id])
    return {
        "others_s": finished[first.id],
        "total_s": max(finished.values()),
        "jobs": len(jobs),
        "steps": "+".join(str(steps(j)) for j in sorted(jobs, key=lambda j: finished[j.id])),
        "first": describe(registry, registry.jobs.get(first.id), ids),
        "stubborn": f"{holder.status.value}, recall {holder.progress.get('recall')}",
    }


def steps(job: Job) -> int:
    return int(job.progress.get("step", 0))


def describe(registry: Registry, job: Job, ids: list[str]) -> str:
    if job.version is None:
        return job.status.value
    held = registry.modules.version(job.module, job.version).fact_ids
    return f"{len(held)}/{len(ids)} facts, recall {job.progress.get('recall')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", type=int, default=20)
    parser.add_argument("--arms", default="off,on")
    args = parser.parse_args()
    settings = get_settings()
    people = phonebook(settings.data_dir, args.facts, offset=1200)
    texts = [p.fact for p in people] + [stubborn_fact(people[0])]
    print(
        "| per-fact gate | facts | others published (s) | stubborn fact done (s) | jobs "
        "| steps per job | first version | stubborn fact's job | others vs off |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    baseline = None
    for arm in args.arms.split(","):
        share = 0.0 if arm == "off" else settings.gate_move_out_fraction
        row = run_arm(settings.model_copy(update={"gate_move_out_fraction": share}), texts)
        baseline = baseline or row["others_s"]
        print(
            f"| {arm} | {len(texts)} | {row['others_s']:.1f} | {row['total_s']:.1f} | "
            f"{row['jobs']} | {row['steps']} | {row['first']} | {row['stubborn']} | "
            f"{row['others_s'] / baseline:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
