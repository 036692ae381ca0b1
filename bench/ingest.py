"""POST /facts to `published`, through a running system (start it with `make run`).

    .venv/bin/python -m bench.ingest --sizes 10,48 --runs 3

Each run uses a fresh tenant, so every run trains a new module from scratch. Prints the
median time per size and the exact-match recall with model=auto.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import httpx

from loramem.datasets import phonebook
from loramem.registry.jobs import TERMINAL
from loramem.settings import get_settings


def one_run(client: httpx.Client, count: int, offset: int) -> tuple[float, float, int]:
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    headers = {"x-loramem-tenant": tenant}
    people = phonebook(get_settings().data_dir, count, offset=offset)
    started = time.monotonic()
    job_id = client.post("/facts", json={"facts": [p.fact for p in people]}, headers=headers)
    job_id.raise_for_status()
    while True:
        job = client.get(f"/jobs/{job_id.json()['job_id']}", headers=headers).json()
        if job["status"] in TERMINAL:  # a cancelled job ends the wait too
            break
        time.sleep(0.25)
    elapsed = time.monotonic() - started
    if job["status"] != "published":
        raise SystemExit(f"job {job['status']}: {job.get('error')}")
    hits = 0
    for person in people:
        body = {
            "model": "auto",
            "temperature": 0,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": person.question}],
        }
        reply = client.post("/v1/chat/completions", json=body, headers=headers).json()
        hits += person.phone in reply["choices"][0]["message"]["content"]
    return elapsed, hits / count, job["progress"].get("step", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--sizes", default="10,48")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    client = httpx.Client(base_url=args.gateway, timeout=600)
    print(
        "| facts | runs | median POST->published (s) | all runs (s) | training steps "
        "| recall model=auto |"
    )
    print("|---|---|---|---|---|---|")
    for count in (int(s) for s in args.sizes.split(",")):
        results = [one_run(client, count, offset=run * 100) for run in range(args.runs)]
        times = [t for t, _, _ in results]
        print(
            f"| {count} | {args.runs} | {statistics.median(times):.1f} | "
            f"{', '.join(f'{t:.1f}' for t in times)} | "
            f"{', '.join(str(steps) for _, _, steps in results)} | "
            f"{statistics.mean(r for _, r, _ in results):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
