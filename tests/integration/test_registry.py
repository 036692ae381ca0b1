"""Registry and queue against the real Redis."""

import pytest
import redis

from loramem import keys
from loramem.errors import Conflict
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.jobs import InvalidTransition, JobStatus
from loramem.registry.modules import VersionInfo
from tests.recipes import NO_FILES, TRAINED
from tests.services import single_and_cluster  # noqa: F401  (each test on both)


def add(registry: Registry, tenant: str, texts: list[str], module: str | None = None):
    """`module`: a name in the tenant's namespace."""
    target = module_id(tenant, module) if module else None
    return registry.facts.add(tenant, texts, [None] * len(texts), [b""] * len(texts), target)


def test_facts_and_job_are_stored_together(registry: Registry, redis_client: redis.Redis) -> None:
    job, ids = add(registry, "t1", ["a is 1", "b is 2"])
    assert sorted(f.text for f in registry.facts.of_module(job.module, "t1")) == [
        "a is 1",
        "b is 2",
    ]
    assert {f.id for f in registry.facts.of_tenant("t1")} == set(ids)
    assert registry.jobs.get(job.id).status is JobStatus.QUEUED
    assert redis_client.xlen(keys.job_stream("t1")) == 1


def test_packing_fills_the_open_module_then_starts_another(registry: Registry) -> None:
    first, _ = add(registry, "t1", ["f"] * 5)
    second, _ = add(registry, "t1", ["g"] * 3)  # 5 + 3 == capacity 8
    third, _ = add(registry, "t1", ["h"])
    assert first.module == second.module != third.module
    other_tenant, _ = add(registry, "t2", ["x"])
    assert other_tenant.module not in {first.module, third.module}


def test_duplicate_fact_id_is_refused_and_nothing_is_written(
    registry: Registry, redis_client: redis.Redis
) -> None:
    registry.facts.add("t1", ["a"], ["same"], [b""])
    before = redis_client.dbsize()
    with pytest.raises(Conflict):
        registry.facts.add("t1", ["b"], ["same"], [b""])
    assert redis_client.dbsize() == before


def test_one_module_name_in_two_tenants_is_two_modules(registry: Registry) -> None:
    first, _ = add(registry, "t1", ["a"], module="shared")
    second, _ = add(registry, "t2", ["b"], module="shared")
    assert first.module != second.module
    assert [f.text for f in registry.facts.of_module(first.module, "t1")] == ["a"]
    assert [f.text for f in registry.facts.of_module(second.module, "t2")] == ["b"]
    assert [m.tenant for m in map(registry.modules.get, [first.module, second.module])] == [
        "t1",
        "t2",
    ]
    with pytest.raises(ValueError):  # an id outside the caller's namespace is a bug
        registry.facts.add("t2", ["c"], [None], [b""], module=first.module)


def test_transitions_are_checked(registry: Registry) -> None:
    job, _ = add(registry, "t1", ["a"])
    with pytest.raises(InvalidTransition):
        registry.jobs.transition(job.id, JobStatus.PUBLISHED)
    registry.jobs.transition(job.id, JobStatus.TRAINING, progress={"step": 1})
    assert registry.jobs.get(job.id).progress == {"step": 1}


def test_publish_switches_the_active_version_and_emits_an_event(registry: Registry) -> None:
    job, ids = add(registry, "t1", ["a"])
    version = registry.modules.next_version(job.module)
    info = VersionInfo(job.module, version, "t1", ids, 1.0, NO_FILES, TRAINED)
    registry.modules.publish(info, {"adapter_config.json": b"{}"})
    assert registry.modules.get(job.module).active_version == version == 1
    assert registry.modules.next_version(job.module) == 2  # numbers are never reused
    events = registry.modules.events_after("0-0", block_ms=10)
    assert events[-1][1]["type"] == "published" and events[-1][1]["module"] == job.module


def test_a_dead_workers_job_is_reclaimed_by_another(
    registry: Registry, redis_client: redis.Redis
) -> None:
    queue = registry.queue
    job, _ = add(registry, "t1", ["a"])
    claim = queue.claim("dead-worker", block_ms=10)
    assert claim is not None and claim.job_id == job.id
    assert queue.claim("live-worker", block_ms=10) is None  # delivered once
    # Make the entry look abandoned: idle for 10 s, as after its worker died.
    redis_client.xclaim(
        claim.stream,
        keys.TRAINER_GROUP,
        "dead-worker",
        0,
        [claim.entry_id],
        idle=10_000,
        justid=True,
    )
    assert queue.reclaim("live-worker", min_idle_ms=5_000) == claim
    queue.heartbeat("live-worker", claim)
    assert queue.reclaim("third-worker", min_idle_ms=5_000) is None  # heartbeat keeps it
    queue.ack(claim)
    assert queue.pending_count() == 0


def test_module_lock_is_exclusive(registry: Registry) -> None:
    first, second = registry.module_lock("m", 5000), registry.module_lock("m", 5000)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire()


def test_backlog_counts_waiting_and_running_jobs_and_their_age(registry: Registry) -> None:
    from prometheus_client import generate_latest

    from trainer.metrics import TrainerMetrics

    queue = registry.queue
    assert queue.backlog() == (0, None)
    first, _ = add(registry, "t1", ["a"])
    add(registry, "t1", ["b"])
    count, oldest_ms = queue.backlog()
    assert count == 2 and oldest_ms is not None
    claim = queue.claim("w", block_ms=10)
    assert claim is not None
    assert queue.backlog() == (2, oldest_ms)  # one running, one waiting
    queue.ack(claim)
    count, newer_ms = queue.backlog()
    assert count == 1 and newer_ms is not None and newer_ms >= oldest_ms
    text = generate_latest(TrainerMetrics(queue).registry).decode()
    assert "loramem_trainer_queue_depth 1.0" in text
    assert 'loramem_trainer_jobs_total{status="failed"} 0.0' in text
