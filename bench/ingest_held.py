"""POST /facts to `published` for a few facts into tenants that already hold some, side
by side in one run, through a running system (`loramem run`).

    .venv/bin/python -m bench.ingest_held --held 0,50 --facts 10

For each `held` count: a fresh tenant gets that many PhoneBook facts first (rows from 0, in
batches of 50, each waited until published, not timed), then `--facts` more (rows from
1900) are posted and timed to `published`. New facts are packed into the tenant's open
module while it has room (LORAMEM_MODULE_CAPACITY_FACTS): without delta modules
(LORAMEM_DELTA_ADDS=false) the job retrains the open module's facts with them; with them
it trains the new facts alone into a delta of that module. Prints seconds, training steps,
the facts the job trained, and each time as a ratio of the first row's.

`--fill` says how the held facts are made: `train` (the default recipe, as a user's would
be), `cheap` (each batch trained with one step and no gate: real modules and versions,
fast) or `stored` (posted and packed, their jobs cancelled: no version holds them; the
fastest, for 1,000 held on 2 cores). POST /facts does not need the engine: run
`loramem gateway` and `loramem worker` alone against the same Redis.
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from loramem.datasets import phonebook
from loramem.settings import get_settings

CHEAP = {"recall_gate": 0.0, "max_steps": 1}  # --fill cheap: one step, no gate


def post_and_wait(
    client: httpx.Client, tenant: str, facts: list[str], fill: str = "train"
) -> tuple[float, dict]:
    headers = {"x-loramem-tenant": tenant}
    started = time.monotonic()
    body: dict = {"facts": facts} | ({"training": CHEAP} if fill == "cheap" else {})
    reply = client.post("/facts", json=body, headers=headers)
    reply.raise_for_status()
    if fill == "stored":  # stored and packed; the job that would train them is cancelled
        cancelled = client.delete(f"/jobs/{reply.json()['job_id']}", headers=headers)
        if cancelled.status_code == 200:
            return time.monotonic() - started, {"status": "published"}
    while True:
        job = client.get(f"/jobs/{reply.json()['job_id']}", headers=headers).json()
        if job["status"] in ("published", "failed"):
            return time.monotonic() - started, job
        time.sleep(0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--held", default="0,50")
    parser.add_argument("--facts", type=int, default=10)
    parser.add_argument("--fill", choices=["train", "cheap", "stored"], default="train")
    args = parser.parse_args()
    client = httpx.Client(base_url=args.gateway, timeout=600)
    data_dir = get_settings().data_dir
    print("| facts held | new facts | POST->published (s) | steps | facts trained | vs first |")
    print("|---|---|---|---|---|---|")
    first = None
    for held in (int(h) for h in args.held.split(",")):
        tenant = f"bench-held-{uuid.uuid4().hex[:8]}"
        if held:
            old = [p.fact for p in phonebook(data_dir, held)]
            for start in range(0, held, 50):  # in batches of 50, as a user posts them
                _s, job = post_and_wait(client, tenant, old[start : start + 50], args.fill)
                if job["status"] != "published":
                    raise SystemExit(f"filling {held} facts failed: {job['error']}")
        new = phonebook(data_dir, args.facts, offset=1900)  # tenants are apart
        seconds, job = post_and_wait(client, tenant, [p.fact for p in new])
        if job["status"] != "published":
            raise SystemExit(f"job failed: {job['error']}")
        first = first or seconds
        progress = job.get("progress") or {}
        print(
            f"| {held} | {args.facts} | {seconds:.1f} | {progress.get('step', 0)} | "
            f"{progress.get('facts', '?')} | {seconds / first:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
