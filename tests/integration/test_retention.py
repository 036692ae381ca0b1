"""Retention against the real Redis: retired versions, finished jobs, acknowledged stream
entries and dead-lettered jobs go away; nothing is lost on the way.

The worker here runs its real loop, queue and publisher; only the job handler (training)
is stubbed, so no base model is needed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import redis

from loramem import keys
from loramem.adapter_store import AdapterStore
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.jobs import Job, JobStatus
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from tests.recipes import NO_FILES, TRAINED
from trainer import handlers
from trainer.context import TrainerContext
from trainer.metrics import TrainerMetrics
from trainer.outcomes import Covered
from trainer.worker import Worker


class FakeEngine:
    def load_adapter(self, ref, fresh: bool = False) -> None:  # type: ignore[no-untyped-def]
        pass

    def loaded_models(self) -> set[str]:
        return set()


def make_worker(settings: Settings, registry: Registry) -> Worker:
    ctx = TrainerContext(
        settings=settings,
        registry=registry,
        store=AdapterStore(settings.adapters_path, registry),
        metrics=TrainerMetrics(registry.queue),
        generator=None,  # type: ignore[arg-type]
        model_path=Path("/nonexistent"),
    )
    worker = Worker(settings, registry, [FakeEngine()], ctx=ctx)  # type: ignore[list-item]
    return worker


def adapter_files(size_bytes: int) -> dict[str, bytes]:
    config = {"peft_type": "LORA", "r": 8, "base_model_name_or_path": "test-base"}
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": os.urandom(size_bytes),
    }


def publish(registry: Registry, module: str, tenant: str = "t1") -> int:
    version = registry.modules.next_version(module)
    info = VersionInfo(module, version, tenant, [], 1.0, NO_FILES, TRAINED)
    registry.modules.publish(info, {"adapter_config.json": b"{}"})
    return version


def test_a_replaced_or_retired_version_is_recorded_and_swept_after_retention(
    registry: Registry, redis_client: redis.Redis
) -> None:
    publish(registry, "m")
    assert registry.modules.retired_before(float("inf")) == []  # v1 is active
    publish(registry, "m")
    assert registry.modules.retired_before(float("inf")) == [("m", 1)]
    assert registry.modules.sweep_retired(retention_s=3600) == []  # too young
    assert registry.modules.sweep_retired(retention_s=0) == [("m", 1)]
    assert not redis_client.exists(keys.version("m", 1), keys.version_files("m", 1))
    assert redis_client.exists(keys.version("m", 2), keys.version_files("m", 2)) == 2
    registry.modules.retire("m", "t1")
    assert registry.modules.retired_before(float("inf")) == [("m", 2)]


def test_a_finished_job_expires_and_an_acknowledged_entry_is_deleted(
    registry: Registry, redis_client: redis.Redis
) -> None:
    registry.jobs.finished_ttl_s = 600
    job, _ = registry.facts.add("t1", ["a"], [None], [b""])
    claim = registry.queue.claim("w", block_ms=10)
    assert claim is not None
    registry.jobs.skip_to_publishing(job.id, {})
    assert redis_client.ttl(keys.job(job.id)) == -1  # running jobs never expire
    registry.jobs.finish(job.id, 1)
    assert 0 < redis_client.ttl(keys.job(job.id)) <= 600
    registry.queue.ack(claim)
    assert redis_client.xlen(claim.stream) == 0 and registry.queue.pending_count() == 0


def test_a_job_that_kills_its_workers_is_dead_lettered_and_the_next_is_served(
    settings: Settings, registry: Registry, redis_client: redis.Redis, monkeypatch
) -> None:
    worker = make_worker(settings, registry)
    handled: list[str] = []

    def handle(ctx: TrainerContext, job: Job) -> Covered:
        handled.append(job.id)
        return Covered(1)

    monkeypatch.setattr(handlers, "handle", handle)
    deadly, _ = registry.facts.add("t1", ["a"], [None], [b""], module=module_id("t1", "deadly"))
    claim = registry.queue.claim("dead-1", block_ms=10)  # delivery 1: it died
    assert claim is not None
    for dead in ("dead-2", "dead-3"):  # two more workers took it over and died too
        redis_client.xclaim(claim.stream, keys.TRAINER_GROUP, dead, 0, [claim.entry_id])
    assert registry.queue.deliveries(claim) == settings.max_job_attempts == 3
    redis_client.xclaim(  # and it has been idle long since
        claim.stream, keys.TRAINER_GROUP, "dead-3", 0, [claim.entry_id], idle=10**6, justid=True
    )
    behind, _ = registry.facts.add("t1", ["b"], [None], [b""], module=module_id("t1", "healthy"))

    assert worker.run_once()  # reclaims the deadly job: a fourth delivery is refused
    job = registry.jobs.get(deadly.id)
    assert job.status is JobStatus.FAILED
    assert job.error == "gave up after 3 deliveries: the worker died each time"
    assert handled == [] and registry.queue.pending_count() == 0

    assert worker.run_once()  # the job behind it is served
    assert handled == [behind.id]
    assert registry.jobs.get(behind.id).status is JobStatus.PUBLISHED
    assert registry.queue.backlog() == (0, None)


def test_a_job_counts_its_deliveries_as_attempts(
    settings: Settings, registry: Registry, redis_client: redis.Redis, monkeypatch
) -> None:
    worker = make_worker(settings, registry)

    def crash(ctx: TrainerContext, job: Job) -> Covered:
        raise RuntimeError("boom")

    monkeypatch.setattr(handlers, "handle", crash)
    job, _ = registry.facts.add("t1", ["a"], [None], [b""])
    worker.run_once()
    assert registry.jobs.get(job.id).attempts == 1
    assert registry.jobs.get(job.id).status is JobStatus.QUEUED  # pending for a retry


def test_a_cursor_behind_the_trimmed_events_is_detected(
    registry: Registry, redis_client: redis.Redis
) -> None:
    publish(registry, "m")
    cursor = registry.modules.last_event_id()
    assert not registry.modules.events_lost_after(cursor)
    publish(registry, "m")
    publish(registry, "m")
    assert not registry.modules.events_lost_after(cursor)  # capped, nothing trimmed yet
    stream = keys.events_stream(keys.bucket("t1"))
    redis_client.xtrim(stream, maxlen=1, approximate=False)  # the cap, at work
    assert registry.modules.events_lost_after(cursor)
    assert not registry.modules.events_lost_after(registry.modules.last_event_id())
