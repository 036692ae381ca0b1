"""Fencing against the real Redis: a worker whose module lock is gone cannot publish or
retire, and a split never brings back a fact deleted while the module trained."""

from __future__ import annotations

import pytest
import redis

from loramem import keys
from loramem.errors import LockLost
from loramem.registry import Registry
from loramem.registry import facts as facts_module
from loramem.registry.jobs import JobStatus
from loramem.registry.modules import VersionInfo
from tests.recipes import NO_FILES, TRAINED


def _publishing_job(registry: Registry, texts: list[str]):  # type: ignore[no-untyped-def]
    job, ids = registry.facts.add("t", texts, [None] * len(texts), [b""] * len(texts))
    registry.jobs.skip_to_publishing(job.id, {"phase": "test"})
    return job, ids


def test_publish_checks_the_lock_token_in_its_transaction(
    registry: Registry, redis_client: redis.Redis
) -> None:
    job, ids = _publishing_job(registry, ["a is 1"])
    mine = registry.module_lock(job.module, ttl_ms=60_000)
    assert mine.acquire()
    redis_client.delete(mine.key)  # expired...
    other = registry.module_lock(job.module, ttl_ms=60_000)
    assert other.acquire()  # ...and taken by another worker
    info = VersionInfo(job.module, 1, "t", ids, 1.0, NO_FILES, TRAINED)
    with pytest.raises(LockLost):
        registry.modules.publish(info, {}, job_id=job.id, fence=mine.fence)
    assert registry.modules.get(job.module).active_version == 0  # nothing was published
    assert registry.jobs.get(job.id).status is JobStatus.PUBLISHING
    registry.modules.publish(info, {}, job_id=job.id, fence=other.fence)  # the holder can
    assert registry.modules.get(job.module).active_version == 1


def test_retire_checks_the_lock_token_too(registry: Registry) -> None:
    job, _ids = _publishing_job(registry, ["a is 1"])
    lost = registry.module_lock(job.module, ttl_ms=60_000)  # never acquired: not the holder
    with pytest.raises(LockLost):
        registry.modules.retire(job.module, "t", job_id=job.id, fence=lost.fence)
    assert registry.jobs.get(job.id).status is JobStatus.PUBLISHING


def test_a_fact_deleted_before_the_split_stays_deleted(
    registry: Registry, redis_client: redis.Redis
) -> None:
    job, ids = registry.facts.add("t", ["a", "b", "c", "d"], [None] * 4, [b""] * 4)
    registry.facts.delete("t", ids[3])  # while the module trained
    moved = registry.facts.split(job.module, "t", ids[2:], {})
    assert not redis_client.exists(keys.fact("t", ids[3]))  # not back as a text-less hash
    assert [f.id for f in registry.facts.of_module(moved.module, "t")] == sorted([ids[2]])
    assert {f.id for f in registry.facts.of_module(job.module, "t")} == set(ids[:2])


def test_a_delete_inside_the_split_transaction_retries_it_and_skips_the_fact(
    registry: Registry, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job, ids = registry.facts.add("t", ["a", "b", "c", "d"], [None] * 4, [b""] * 4)
    stage_module = facts_module.stage_module
    raced = []

    def delete_between_read_and_exec(pipe, tenant, name):  # type: ignore[no-untyped-def]
        if not raced:  # another client deletes a watched fact before EXEC: WatchError
            raced.append(True)
            registry.facts.delete("t", ids[3])
        stage_module(pipe, tenant, name)

    monkeypatch.setattr(facts_module, "stage_module", delete_between_read_and_exec)
    moved = registry.facts.split(job.module, "t", ids[2:], {})
    assert raced and not redis_client.exists(keys.fact("t", ids[3]))
    assert [f.id for f in registry.facts.of_module(moved.module, "t")] == [ids[2]]
