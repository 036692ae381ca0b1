"""The registry's write and read path on a single Redis and on a three-master Redis
Cluster, side by side in one run: what moving onto a cluster costs per operation.

    .venv/bin/python -m bench.cluster_store --tenants 20 --posts 10

Both stores run on this machine (the single Redis is a fresh `redis-server` like the
cluster's nodes, so neither has an advantage of being warm). Per store, for each of
`--tenants` tenants: `--posts` fact posts of one fact each (store, pack, queue the job
and announce it: one WATCH transaction), each followed by a worker's claim, the job's
walk to publishing (three transactions) and a publish of version n of the module (one
more); then a router-style read of every event and every tenant's active versions.
Prints operations per second of each step for both stores and the ratio cluster / single.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from loramem.adapter_store import checksum
from loramem.knobs import TrainingKnobs, VersionRecipe
from loramem.launcher import redis_server_binary
from loramem.local_cluster import local_cluster
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo

TRAINED = VersionRecipe(
    made_by="trained", base_model="bench", rank=8, training=TrainingKnobs().with_overrides({})
)


def run(registry: Registry, tenants: int, posts: int) -> dict[str, float]:
    """Operations per second of each step."""
    timings: dict[str, float] = {}

    def timed(step: str, count: int, work: Callable[[], object]) -> None:
        started = time.perf_counter()
        work()
        timings[step] = count / (time.perf_counter() - started)

    modules: dict[str, str] = {}

    def ingest_and_publish() -> None:
        for t in range(tenants):
            tenant = f"tenant-{t}"
            for n in range(1, posts + 1):
                job, ids = registry.facts.add(tenant, [f"fact {n} of {tenant}"], [None], [b""])
                claim = registry.queue.claim("bench", block_ms=1000)
                assert claim is not None and claim.job_id == job.id
                registry.jobs.skip_to_publishing(job.id, {"phase": "bench"})
                info = VersionInfo(job.module, n, tenant, ids, 1.0, checksum({}), TRAINED)
                registry.modules.publish(info, {}, job_id=job.id)
                registry.queue.ack(claim)
                modules[tenant] = job.module

    timed("post + claim + publish", tenants * posts, ingest_and_publish)
    timed("read every event", 1, lambda: registry.modules.events_after("0-0", block_ms=10))
    timed(
        "active versions of every tenant",
        tenants,
        lambda: [registry.modules.active_versions(t) for t in registry.modules.tenants()],
    )
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--posts", type=int, default=10)
    parser.add_argument("--single-port", type=int, default=7100)
    parser.add_argument("--cluster-ports", default="7101,7102,7103")
    args = parser.parse_args()
    binary = redis_server_binary()
    assert binary, "needs redis-server"
    folder = Path(tempfile.mkdtemp(prefix="loramem-bench-single-"))
    single = subprocess.Popen(
        [binary, "--port", str(args.single_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        results = {
            "single": run(
                Registry.from_url(f"redis://127.0.0.1:{args.single_port}"), args.tenants, args.posts
            )
        }
        with local_cluster(binary, tuple(map(int, args.cluster_ports.split(",")))) as url:
            results["cluster"] = run(Registry.from_url(url), args.tenants, args.posts)
    finally:
        single.terminate()
        single.wait()
        shutil.rmtree(folder, ignore_errors=True)
    print(f"{'step':34} {'single /s':>10} {'cluster /s':>11} {'cluster/single':>15}")
    for step, rate in results["single"].items():
        other = results["cluster"][step]
        print(f"{step:34} {rate:10.1f} {other:11.1f} {other / rate:15.2f}")


if __name__ == "__main__":
    main()
