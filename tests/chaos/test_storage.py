"""Bounded storage: Redis memory after 200 publish cycles of one module stays within 10%
of its memory after 20. Retired versions, finished jobs and acknowledged stream entries
go (retention 0 here); a replaced version's local folder goes at the next sweep.

The worker runs its real loop, queue, publisher and sweep on the real Redis; only the
training handler is stubbed (a 256 KiB adapter per version), so 200 cycles take seconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from loramem import keys
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.jobs import Job
from loramem.settings import Settings
from tests.chaos.support import figures
from tests.integration.test_retention import adapter_files, make_worker
from tests.recipes import TRAINED
from tests.services import redis_db_url
from trainer import handlers
from trainer.context import TrainerContext
from trainer.outcomes import Artifact

CYCLES = (20, 200)


def used_bytes(client: redis.Redis) -> int:
    """Memory of every key in the test database (the server's used_memory also counts
    other databases, which other runs may be writing)."""
    return sum(int(client.memory_usage(key, samples=0) or 0) for key in client.scan_iter())


@pytest.mark.timeout(600)
def test_many_publish_cycles_leave_storage_bounded(
    tmp_path: Path, registry: Registry, redis_client: redis.Redis, monkeypatch
) -> None:
    settings = Settings(
        redis_url=redis_db_url(15),
        cache_dir=tmp_path / "cache",
        engine_url="http://127.0.0.1:9",
        retired_version_retention_s=0,
        job_retention_s=0,
    )
    registry.jobs.finished_ttl_s = settings.job_retention_s
    worker = make_worker(settings, registry)

    def train(ctx: TrainerContext, job: Job) -> Artifact:  # a 256 KiB adapter per version
        ids = [f.id for f in ctx.registry.facts.of_module(job.module, job.tenant)]
        ctx.registry.jobs.skip_to_publishing(job.id, {"phase": "stub"})
        return Artifact(job.module, adapter_files(256 * 1024), TRAINED, ids, 1.0)

    monkeypatch.setattr(handlers, "handle", train)
    module = module_id("t1", "m")
    job, [fact_id] = registry.facts.add("t1", ["x is 0"], [None], [b"\0" * 1536], module=module)
    assert worker.run_once()
    measured: dict[int, tuple[int, int]] = {}
    for cycle in range(1, CYCLES[-1] + 1):
        registry.facts.replace("t1", fact_id, f"x is {cycle}", b"\0" * 1536)
        assert worker.run_once()
        if cycle in CYCLES:
            info = redis_client.info("memory")
            measured[cycle] = (used_bytes(redis_client), int(info["used_memory"]))
    assert registry.modules.get(module).active_version == CYCLES[-1] + 1
    (after_20, server_20), (after_200, server_200) = measured[CYCLES[0]], measured[CYCLES[-1]]
    figures(
        "storage",
        db_bytes_after_20=after_20,
        db_bytes_after_200=after_200,
        growth=f"{after_200 / after_20 - 1:+.1%}",
        server_used_memory_20=server_20,
        server_used_memory_200=server_200,
    )
    assert abs(after_200 - after_20) <= 0.10 * after_20
    assert registry.queue.backlog() == (0, None)
    assert not list(redis_client.scan_iter(keys.PREFIX + "*:job:*"))
    # v201 is active; v200 was retired by its publish and goes at the next sweep
    assert sorted(v for _m, v in worker.ctx.store.local_versions()) == [200, 201]
