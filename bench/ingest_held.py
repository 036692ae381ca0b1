"""POST /facts to `published` for a few facts into tenants that already hold some, side
by side in one run, through a running system (`loramem run`).

    .venv/bin/python -m bench.ingest_held --held 0,50 --facts 10

For each `held` count: a fresh tenant gets that many PhoneBook facts first (rows from 0, in
batches of 50, each waited until published, not timed), then `--facts` more (rows from
1900) are posted and timed to `published`. New facts are packed into the tenant's open
module while it has room (LORAMEM_MODULE_CAPACITY_FACTS), so what a job retrains is the
open module's facts: a tenant of T facts has T mod capacity of them there. Prints seconds,
training steps, the facts the job trained, and each time as a ratio of the first row's.
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx

from loramem.datasets import phonebook
from loramem.settings import get_settings


def post_and_wait(client: httpx.Client, tenant: str, facts: list[str]) -> tuple[float, dict]:
    headers = {"x-loramem-tenant": tenant}
    started = time.monotonic()
    reply = client.post("/facts", json={"facts": facts}, headers=headers)
    reply.raise_for_status()
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
                _s, job = post_and_wait(client, tenant, old[start : start + 50])
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
