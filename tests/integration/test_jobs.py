"""The job queue and job cancelling against the real Redis: fair turns over tenants,
crash repair of the rotation, and DELETE /jobs/{id} for queued and running jobs.

The worker runs its real loop, queue, heartbeat and publisher; only the job handler is
replaced (no base model), and where a handler "trains", it writes progress per step
through the real TrainingRun.on_step, which is where a running job learns it was
cancelled.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from loramem import keys
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.jobs import Job, JobStatus
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.integration.test_api import assert_openai_error
from tests.integration.test_retention import adapter_files, make_worker
from tests.recipes import NO_FILES, TRAINED
from tests.services import single_and_cluster  # noqa: F401  (each test on both)
from trainer import handlers
from trainer.context import TrainerContext
from trainer.outcomes import Artifact
from trainer.training_run import TrainingRun
from trainer.worker import Heartbeat


def add(registry: Registry, tenant: str, text: str, module: str | None = None) -> Job:
    """`module`: a name in the tenant's namespace."""
    target = module_id(tenant, module) if module else None
    job, _ids = registry.facts.add(tenant, [text], [None], [b""], module=target)
    return job


def test_a_burst_of_one_tenant_does_not_queue_ahead_of_another_tenants_job(
    registry: Registry,
) -> None:
    burst = [add(registry, "a", f"fact {n}").id for n in range(50)]
    single = add(registry, "b", "the one fact").id
    claims = []
    while (claim := registry.queue.claim("w", block_ms=10)) is not None:
        claims.append(claim)
        registry.queue.ack(claim)
    order = [c.job_id for c in claims]
    print(f"\n[fairness] b's job was claim {order.index(single) + 1} of {len(order)}")
    assert single in order[:2]
    assert sorted(order) == sorted(burst + [single])  # each job exactly once
    assert [j for j in order if j != single] == burst  # a tenant's own jobs stay in order


def test_tenants_take_turns_while_both_have_work(registry: Registry) -> None:
    for n in range(3):
        add(registry, "a", f"a {n}")
    for n in range(3):
        add(registry, "b", f"b {n}")
    add(registry, "c", "c 0")
    tenants = []
    while (claim := registry.queue.claim("w", block_ms=10)) is not None:
        tenants.append(claim.tenant)
        registry.queue.ack(claim)
    assert tenants == ["a", "b", "c", "a", "b", "a", "b"]


def test_a_tenant_pacing_its_jobs_one_at_a_time_cannot_starve_a_burst(
    registry: Registry,
) -> None:
    for n in range(5):
        add(registry, "a", f"a {n}")
    tenants = []
    for n in range(6):  # "s" always has exactly one job waiting, queued after each claim
        add(registry, "s", f"s {n}")
        claim = registry.queue.claim("w", block_ms=10)
        assert claim is not None
        tenants.append(claim.tenant)
        registry.queue.ack(claim)
    assert tenants == ["a", "s", "a", "s", "a", "s"]


def test_the_worker_serves_the_single_job_of_another_tenant_second(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(settings, registry)
    handled: list[str] = []

    def publish(ctx: TrainerContext, job: Job) -> Artifact:
        handled.append(job.tenant)
        ctx.registry.jobs.skip_to_publishing(job.id, {"phase": "stub"})
        ids = [f.id for f in ctx.registry.facts.of_module(job.module, job.tenant)]
        return Artifact(job.module, adapter_files(64), TRAINED, ids, 1.0)

    monkeypatch.setattr(handlers, "handle", publish)
    for n in range(10):
        add(registry, "a", f"fact {n}", module=f"a{n}")
    single = add(registry, "b", "the one fact", module="b0")
    assert worker.run_once() and worker.run_once()
    assert handled == ["a", "b"]
    assert registry.jobs.get(single.id).status is JobStatus.PUBLISHED


def test_a_tenant_lost_from_the_rotation_by_a_crash_is_put_back(
    registry: Registry, redis_client: redis.Redis
) -> None:
    job = add(registry, "a", "x")
    redis_client.zpopmin(keys.jobs_ready(keys.bucket("a")))  # a worker popped the tenant, then died
    assert registry.queue.claim("w", block_ms=10) is None  # nobody else sees the job...
    registry.queue.tidy()  # ...until the next scan
    claim = registry.queue.claim("w", block_ms=10)
    assert claim is not None and claim.job_id == job.id


def test_an_empty_stream_is_dropped_and_made_again_by_the_next_job(
    registry: Registry, redis_client: redis.Redis
) -> None:
    add(registry, "a", "x")
    claim = registry.queue.claim("w", block_ms=10)
    assert claim is not None
    registry.queue.tidy()  # running: kept
    assert redis_client.exists(claim.stream)
    registry.queue.ack(claim)
    registry.queue.tidy()
    assert not redis_client.exists(claim.stream) and registry.queue.tenants() == []
    later = add(registry, "a", "y")  # a new stream, without a consumer group yet
    again = registry.queue.claim("w", block_ms=10)
    assert again is not None and again.job_id == later.id


def test_waiting_kinds_are_those_of_the_jobs_no_worker_has_read_yet(
    registry: Registry, redis_client: redis.Redis
) -> None:
    """What a background job looks at between steps (trainer/handlers.py consolidate)."""
    assert registry.queue.waiting_kinds() == set()
    consolidation = registry.facts.queue_consolidation(module_id("a", "people"), "a")
    assert consolidation is not None
    assert registry.queue.waiting_kinds() == {"consolidate"}
    add(registry, "b", "a user's fact")
    assert registry.queue.waiting_kinds() == {"consolidate", "add"}
    first = registry.queue.claim("w", block_ms=10)
    assert first is not None and first.job_id == consolidation.id
    assert registry.queue.waiting_kinds() == {"add"}  # the running one is not waiting
    assert registry.queue.claim("w", block_ms=10) is not None
    assert registry.queue.waiting_kinds() == set()
    # An entry queued before entries named their kind is taken for a user's job.
    redis_client.xadd(keys.job_stream("c"), {"job_id": "j-old"})
    redis_client.zadd(keys.jobs_ready(keys.bucket("c")), {"c": 1})
    assert registry.queue.waiting_kinds() == {"add"}


@pytest.fixture
def api(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings, embedder=fake_embedder)) as gateway:
        yield gateway


A, B = {"x-loramem-tenant": "a"}, {"x-loramem-tenant": "b"}


def test_a_queued_job_is_cancelled_without_running_and_its_facts_wait_for_the_next(
    api: TestClient, settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(settings, registry)
    trained: list[list[str]] = []

    def publish(ctx: TrainerContext, job: Job) -> Artifact:
        ids = [f.id for f in ctx.registry.facts.of_module(job.module, job.tenant)]
        trained.append(ids)
        ctx.registry.jobs.skip_to_publishing(job.id, {"phase": "stub"})
        return Artifact(job.module, adapter_files(64), TRAINED, ids, 1.0)

    monkeypatch.setattr(handlers, "handle", publish)
    posted = api.post("/facts", json={"facts": ["x is 1"], "module": "m"}, headers=A).json()
    job_id, [fact_id] = posted["job_id"], posted["fact_ids"]
    assert_openai_error(api.delete(f"/jobs/{job_id}", headers=B), 404)  # not b's
    assert api.get(f"/jobs/{job_id}", headers=A).json()["status"] == "queued"

    reply = api.delete(f"/jobs/{job_id}", headers=A)
    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] == "cancelled"
    shown = api.get(f"/jobs/{job_id}", headers=A).json()
    assert shown["status"] == "cancelled" and shown["error"] == "cancelled by the client"
    assert shown["progress"]["unlearned_fact_ids"] == [fact_id]  # reported, not lost
    assert_openai_error(api.delete(f"/jobs/{job_id}", headers=A), 409)

    assert worker.run_once()  # takes the cancelled job off the queue without running it
    assert trained == [] and registry.queue.backlog() == (0, None)
    assert [f["id"] for f in api.get("/facts", headers=A).json()] == [fact_id]

    second = api.post("/facts", json={"facts": ["y is 2"], "module": "m"}, headers=A).json()
    assert worker.run_once()
    assert trained == [sorted([fact_id, *second["fact_ids"]])]  # the next job learns both
    assert_openai_error(api.delete(f"/jobs/{second['job_id']}", headers=A), 409)  # done


def test_edit_and_delete_jobs_cannot_be_cancelled(api: TestClient) -> None:
    """The job's kind is shown, and the refusal says why (the console shows both)."""
    posted = api.post("/facts", json={"facts": ["x is 1"]}, headers=A).json()
    [fact_id] = posted["fact_ids"]
    assert api.get(f"/jobs/{posted['job_id']}", headers=A).json()["kind"] == "add"
    editing = api.put(f"/facts/{fact_id}", json={"text": "x is 2"}, headers=A).json()
    deleting = api.delete(f"/facts/{fact_id}", headers=A).json()
    for job_id, kind in ((editing["job_id"], "edit"), (deleting["job_id"], "delete")):
        refused = api.delete(f"/jobs/{job_id}", headers=A)
        assert_openai_error(refused, 409)
        assert f"{kind} jobs are what make the served module forget" in refused.text
        shown = api.get(f"/jobs/{job_id}", headers=A).json()
        assert shown["status"] == "queued" and shown["kind"] == kind
    assert {j["id"]: j["kind"] for j in api.get("/jobs", headers=A).json()} == {
        posted["job_id"]: "add",
        editing["job_id"]: "edit",
        deleting["job_id"]: "delete",
    }
    assert_openai_error(api.delete("/jobs/no-such-job", headers=A), 404)


def _stepping_handler(cancel_at_step: int, steps: list[int]):  # type: ignore[no-untyped-def]
    """A handler that "trains" through TrainingRun.on_step and is cancelled, as a client
    would, at `cancel_at_step`."""

    def train(ctx: TrainerContext, job: Job) -> Artifact:
        run = TrainingRun(ctx, job, ctx.settings.training)
        ctx.registry.jobs.transition(job.id, JobStatus.TRAINING, progress=run.progress)
        try:
            for step in range(1, 100):
                if step == cancel_at_step:
                    ctx.registry.jobs.cancel(job.id, job.tenant)
                run.on_step(step, 100, 1.0 / step)
                steps.append(step)
        finally:
            run.close()
        raise AssertionError("a cancelled job must stop training")

    return train


def test_a_running_job_stops_at_its_next_step_and_publishes_nothing(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(settings, registry)
    steps: list[int] = []
    monkeypatch.setattr(handlers, "handle", _stepping_handler(4, steps))
    job = add(registry, "a", "x is 1", module="m")
    assert worker.run_once()
    assert steps == [1, 2, 3]  # step 4's progress write found the job cancelled
    done = registry.jobs.get(job.id)
    assert done.status is JobStatus.CANCELLED and done.progress["step"] == 3
    assert registry.modules.get(job.module).active_version == 0  # nothing published
    assert registry.queue.backlog() == (0, None)  # acknowledged, not retried
    assert worker.metrics.jobs.labels("cancelled")._value.get() == 1


def test_a_job_cancelled_after_training_is_not_published(
    settings: Settings, registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled between the last step and the publish: the heartbeat notices (the first
    job) or else the publish transaction refuses (the second); either way no version, no
    folder and no engine adapter remain."""
    worker = make_worker(settings, registry)
    worker.settings = settings.model_copy(update={"job_claim_idle_ms": 1000})  # 0.33 s beats
    beats: list[Heartbeat] = []
    enter = Heartbeat.__enter__
    monkeypatch.setattr(Heartbeat, "__enter__", lambda beat: beats.append(beat) or enter(beat))
    loaded: list[str] = []
    engine = worker.publisher.engines[0]
    engine.load_adapter = lambda ref, fresh: loaded.append(ref.name)  # type: ignore[method-assign]
    engine.unload_adapter = loaded.remove  # type: ignore[method-assign]
    noticed = add(registry, "a", "x is 1", module="noticed")
    refused = add(registry, "a", "y is 1", module="refused")

    def train(ctx: TrainerContext, job: Job) -> Artifact:
        ids = [f.id for f in ctx.registry.facts.of_module(job.module, job.tenant)]
        ctx.registry.jobs.skip_to_publishing(job.id, {"phase": "stub"})
        ctx.registry.jobs.cancel(job.id, job.tenant)
        if job.id == noticed.id:
            assert beats[-1].cancelled.wait(30)
        return Artifact(job.module, adapter_files(64), TRAINED, ids, 1.0)

    monkeypatch.setattr(handlers, "handle", train)
    assert worker.run_once() and worker.run_once()
    for job in (noticed, refused):
        assert registry.jobs.get(job.id).status is JobStatus.CANCELLED
        assert registry.modules.get(job.module).active_version == 0
    assert registry.modules.next_version(noticed.module) == 1  # stopped before taking a number
    assert registry.modules.next_version(refused.module) == 2  # took v1, then the publish refused
    assert worker.ctx.store.local_versions() == [] and loaded == []  # all taken back
    assert registry.queue.backlog() == (0, None)
    assert worker.metrics.jobs.labels("cancelled")._value.get() == 2  # neither failed


def test_a_version_is_published_only_for_a_job_not_cancelled(registry: Registry) -> None:
    job = add(registry, "a", "x is 1", module="m")
    registry.jobs.skip_to_publishing(job.id, {})
    registry.jobs.cancel(job.id, "a")
    info = VersionInfo(job.module, 1, "a", [], 1.0, NO_FILES, TRAINED)
    with pytest.raises(Exception, match="cancelled"):
        registry.modules.publish(info, {"adapter_config.json": b"{}"}, job_id=job.id)
    assert registry.modules.get(job.module).active_version == 0
