"""Adds into a module that holds facts train alone into a delta module; consolidation folds
deltas back into their module and retires them in the publish transaction. Real Redis; the
first test trains for real (PEFT on the real base model, one step per job, no gate), the
others replace the handler (tests/integration/test_jobs.py does the same) to put a change
or a worker's death between a consolidation's training and its publish."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import redis

from loramem import keys
from loramem.datasets import phonebook
from loramem.engine import EngineClient
from loramem.registry import Registry
from loramem.registry.jobs import Job, JobStatus
from loramem.settings import Settings
from tests.integration.test_retention import adapter_files, make_worker
from tests.recipes import TRAINED
from trainer import handlers
from trainer.context import TrainerContext
from trainer.gate import GateResult, judge
from trainer.outcomes import Artifact, Covered, JobRefused, Outcome
from trainer.worker import Worker

ONE_STEP_NO_GATE = {"recall_gate": 0.0, "max_steps": 1}


@pytest.fixture
def deltas(redis_client: redis.Redis, settings: Settings) -> Registry:
    return Registry(redis_client, settings.module_capacity_facts, delta_adds=True)


@pytest.fixture
def trainer_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "cache_dir": Settings().cache_dir,  # the shared base model, converted once
            "training": Settings().training.with_overrides(ONE_STEP_NO_GATE),
            "consolidate_deltas": 2,
            "consolidate_after_s": 3600.0,
        }
    )


def worker(settings: Settings, registry: Registry) -> Worker:
    return Worker(settings, registry, [EngineClient(settings.engine_url)])


def add(registry: Registry, texts: list[str]) -> tuple[str, list[str]]:
    job, ids = registry.facts.add("t", texts, [None] * len(texts), [b""] * len(texts))
    return job.id, ids


def run_job(w: Worker, job_id: str) -> None:
    assert w.run_once()
    assert w.registry.jobs.get(job_id).status is JobStatus.PUBLISHED


def one_active_version_each(registry: Registry) -> Counter[str]:
    """How many active versions list each live fact of tenant "t"."""
    held = Counter(f for v in registry.modules.active_versions("t") for f in v.fact_ids)
    return Counter({f.id: held[f.id] for f in registry.facts.of_tenant("t")})


def test_adds_train_alone_into_deltas_and_consolidation_folds_them_back(
    trainer_settings: Settings, deltas: Registry
) -> None:
    people = [p.fact for p in phonebook(trainer_settings.data_dir, 4, offset=340)]
    w = worker(trainer_settings, deltas)
    first, old = add(deltas, people[:2])
    run_job(w, first)
    parent = deltas.jobs.get(first).module
    jobs = [add(deltas, [text]) for text in people[2:]]  # two deltas of it
    folded = [deltas.jobs.get(j).module for j, _ids in jobs]
    assert all(d.startswith(parent + "-d") for d in folded) and len(set(folded)) == 2
    for job_id, ids in jobs:
        run_job(w, job_id)
        done = deltas.jobs.get(job_id)
        assert done.progress["facts"] == 1  # only the new fact, not the module's two
        assert deltas.modules.version(done.module, done.version or 0).fact_ids == ids
    assert deltas.modules.get(parent).active_version == 1  # untouched
    assert set(one_active_version_each(deltas).values()) == {1}
    # Packing counts the deltas' facts: 4 held, 5 more do not fit in 8.
    third, _ = add(deltas, [f"The colour of thing {n} is red." for n in range(5)])
    assert not deltas.jobs.get(third).module.startswith(parent)
    deltas.jobs.fail(third, "not part of this test")

    assert deltas.facts.consolidations_due(2, 3600.0) == [(parent, "t")]
    assert w.run_once()  # acknowledges the failed job
    assert w.run_once() is False  # idle: it queues the consolidation
    [queued] = deltas.jobs.open_of_tenant("t")
    assert (queued.kind, queued.module) == ("consolidate", parent)
    assert deltas.facts.queue_consolidation(parent, "t") is None  # one at a time
    run_job(w, queued.id)
    info = deltas.modules.get(parent)
    assert info.active_version == 2 and info.fact_count == 4
    assert deltas.modules.version(parent, 2).recipe.made_by == "trained"
    assert parent in {m.name for m in deltas.modules.of_tenant("t")}
    assert not set(folded) & {m.name for m in deltas.modules.of_tenant("t")}
    retired = {m for m, _v in deltas.modules.retired_before(time.time() + 1)}
    assert set(folded) <= retired  # their versions are swept after the retention
    consolidated = old + [fact_id for _job, ids in jobs for fact_id in ids]
    assert {f.module for f in deltas.facts.by_id("t", consolidated)} == {parent}
    assert [one_active_version_each(deltas)[f] for f in consolidated] == [1] * 4
    assert deltas.facts.consolidations_due(1, 0.0) == []
    events = [e for _i, e in deltas.modules.events_after("0-0", 10)]
    tail = [(e["type"], e["module"]) for e in events[-3:]]
    assert tail == [("published", parent)] + [("retired", d) for d in sorted(folded)]


@pytest.mark.parametrize("consolidate_deltas", [2, 1])
def test_a_consolidation_yields_to_a_users_job_queued_behind_it(
    trainer_settings: Settings, deltas: Registry, consolidate_deltas: int
) -> None:
    """A user's add queued while a consolidation trains goes first: the consolidation
    stops at its next step, publishes nothing, and an idle worker queues it again. With
    twice the deltas that make it due (here 2 with `consolidate_deltas` 1) it runs
    through, so deltas stay bounded under steady load."""
    settings = trainer_settings.model_copy(update={"consolidate_deltas": consolidate_deltas})
    people = [p.fact for p in phonebook(settings.data_dir, 4, offset=350)]
    w = worker(settings, deltas)
    first, _ = add(deltas, people[:1])
    run_job(w, first)
    parent = deltas.jobs.get(first).module
    for text in people[1:3]:  # two deltas of it
        run_job(w, add(deltas, [text])[0])
    queued = deltas.facts.queue_consolidation(parent, "t")
    assert queued is not None
    users, _ = add(deltas, people[3:])  # queued behind the consolidation
    assert w.run_once()
    if consolidate_deltas == 1:  # 2 deltas, twice the due count: no yielding
        assert deltas.jobs.get(queued.id).status is JobStatus.PUBLISHED
        assert deltas.jobs.get(users).status is JobStatus.QUEUED
        return
    stopped = deltas.jobs.get(queued.id)
    assert stopped.status is JobStatus.CANCELLED and "yielded" in (stopped.error or "")
    assert deltas.modules.get(parent).active_version == 1  # nothing published
    run_job(w, users)  # the user's add, next
    assert w.run_once() is False  # idle: the consolidation is queued again
    [again] = deltas.jobs.open_of_tenant("t")
    assert (again.kind, again.module) == ("consolidate", parent)
    run_job(w, again.id)
    assert deltas.modules.get(parent).fact_count == 4  # all three deltas folded in


def stand_in(ctx: TrainerContext, job: Job) -> Outcome:
    """What the real handlers return, without training: the facts it would train on."""
    ctx.registry.jobs.skip_to_publishing(job.id, {"phase": "stand-in"})
    if job.kind == "consolidate":
        deltas = ctx.registry.facts.deltas_to_fold(job.module, job.tenant)
        if not deltas:
            return Covered(ctx.registry.modules.get(job.module).active_version)
        facts = ctx.registry.facts.of_module(job.module, job.tenant)
        facts += [f for held in deltas.values() for f in held]
        folded = {d: {f.id: f.text for f in held} for d, held in deltas.items()}
        ids = [f.id for f in facts]
        return Artifact(job.module, adapter_files(64), TRAINED, ids, 1.0, folded=folded)
    ids = [f.id for f in ctx.registry.facts.of_module(job.module, job.tenant)]
    return Artifact(job.module, adapter_files(64), TRAINED, ids, 1.0)


def module_and_delta(w: Worker, registry: Registry) -> tuple[str, str, str]:
    """A published module and a published delta of it: (module, delta, the delta's fact)."""
    first, _ = add(registry, ["The colour of A is red."])
    run_job(w, first)
    second, [fact] = add(registry, ["The colour of B is blue."])
    run_job(w, second)
    return registry.jobs.get(first).module, registry.jobs.get(second).module, fact


def test_a_delta_changed_while_consolidating_stays_as_it_is(
    settings: Settings, deltas: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit lands between training and publishing: the publish refuses the whole fold,
    and the delta's own edit job makes the delta forget the old text."""
    monkeypatch.setattr(handlers, "handle", stand_in)
    w = make_worker(settings, deltas)
    parent, delta, edited = module_and_delta(w, deltas)
    queued = deltas.facts.queue_consolidation(parent, "t")
    assert queued is not None
    outcome = stand_in(w.ctx, deltas.jobs.get(queued.id))
    assert isinstance(outcome, Artifact) and set(outcome.folded) == {delta}
    edit = deltas.facts.replace("t", edited, "The colour of B is green.", b"")
    with pytest.raises(JobRefused, match="not consolidated"):
        w.publisher.apply(deltas.jobs.get(queued.id), outcome)
    assert deltas.modules.get(parent).active_version == 1
    assert deltas.facts.get("t", edited).module == delta
    assert deltas.modules.get(delta).active_version == 1
    assert deltas.facts.deltas_to_fold(parent, "t") == {}  # its edit job is still open
    assert w.run_once()  # the consolidation again: nothing to fold while the edit waits
    again = deltas.jobs.get(queued.id)
    assert (again.status, again.version) == (JobStatus.PUBLISHED, 1)
    run_job(w, edit.id)  # the delta retrains on its new text
    assert deltas.modules.get(delta).active_version == 2
    assert set(deltas.facts.deltas_to_fold(parent, "t")) == {delta}


def test_a_consolidation_killed_midway_is_done_once_by_the_next_worker(
    settings: Settings, deltas: Registry, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after training, before publishing: nothing moved, and the job reclaimed by
    another worker folds every delta once. Killed after publishing, before acknowledging:
    the redelivery finds the job finished and only acknowledges it."""
    monkeypatch.setattr(handlers, "handle", stand_in)
    settings = settings.model_copy(update={"job_claim_idle_ms": 1000})
    w = make_worker(settings, deltas)
    parent, delta, fact = module_and_delta(w, deltas)
    queued = deltas.facts.queue_consolidation(parent, "t")
    assert queued is not None
    claim = deltas.queue.claim("dead", block_ms=10)
    assert claim is not None and claim.job_id == queued.id
    stand_in(w.ctx, deltas.jobs.get(queued.id))  # trained, then the worker died
    assert deltas.modules.get(delta).active_version == 1
    assert deltas.modules.get(parent).active_version == 1
    time.sleep(settings.job_claim_idle_ms / 1000 + 0.2)
    assert w.run_once()  # reclaims and runs it
    assert deltas.jobs.get(queued.id).status is JobStatus.PUBLISHED
    assert [m.name for m in deltas.modules.of_tenant("t")] == [parent]
    assert deltas.facts.get("t", fact).module == parent
    assert set(one_active_version_each(deltas).values()) == {1}
    redis_client.xadd(keys.job_stream("t"), {"job_id": queued.id})  # delivered again
    redis_client.zadd(keys.jobs_ready(keys.bucket("t")), {"t": 0})
    assert w.run_once()
    assert deltas.modules.get(parent).active_version == 2  # not published twice
    assert deltas.queue.pending_count() == 0


class MissesOne:
    """Stands in for a consolidation's training (tests/integration/test_trainer.py trains
    for real): a round whose recall check misses the fact `MissesOne.missing` only."""

    missing = ""

    def __init__(self, ctx: TrainerContext, job: Job, _knobs: object) -> None:
        self.ctx, self.job, self.jobs = ctx, job, ctx.registry.jobs
        self.progress: dict[str, object] = {}
        self.done_steps, self.last_loss = 40, 0.1

    def train_until_gate(self, facts: list, warm: bool) -> GateResult:
        self.jobs.transition(self.job.id, JobStatus.TRAINING)
        self.jobs.transition(self.job.id, JobStatus.VALIDATING)
        missed = tuple(f.id for f in facts if f.id == self.missing)
        share = self.ctx.settings.gate_move_out_fraction
        verdict = judge(len(missed), len(facts), 0, 0.95, share)
        return GateResult(1 - len(missed) / len(facts), missed, verdict)

    def seconds(self) -> float:
        return 0.0

    def servable_files(self) -> dict[str, bytes]:
        return adapter_files(64)

    def recipe(self) -> object:
        return TRAINED

    def close(self) -> None:
        pass


def test_a_consolidation_moves_out_a_fact_it_missed_and_folds_the_rest(
    settings: Settings, deltas: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-fact gate in a consolidation: a delta's fact that did not stick in the
    module moves to a module of its own; the version holds the others, its delta (now
    empty) is retired with the rest, and nothing is left unheld but the moved fact."""
    real = handlers.handle
    monkeypatch.setattr(
        handlers, "handle", lambda ctx, job: real(ctx, job) if job.kind == "consolidate"
        else stand_in(ctx, job),
    )  # fmt: skip
    monkeypatch.setattr(handlers, "TrainingRun", MissesOne)
    w = make_worker(settings.model_copy(update={"gate_move_out_fraction": 0.5}), deltas)
    parent, missed_delta, stubborn = module_and_delta(w, deltas)
    third, [kept] = add(deltas, ["The colour of C is green."])
    run_job(w, third)
    MissesOne.missing = stubborn
    queued = deltas.facts.queue_consolidation(parent, "t")
    assert queued is not None
    run_job(w, queued.id)

    done = deltas.jobs.get(queued.id)
    [moved] = done.progress["moved_out"]
    assert moved["fact_ids"] == [stubborn] and "not recalled" in moved["reason"]
    version = deltas.modules.version(parent, done.version or 0)
    assert stubborn not in version.fact_ids and kept in version.fact_ids
    assert version.recall == 1.0  # of what it holds
    assert [m.name for m in deltas.modules.of_tenant("t")] == sorted(
        [parent, deltas.jobs.get(moved["job_id"]).module]
    )  # both deltas retired, the one whose fact moved out too
    assert missed_delta not in {m.name for m in deltas.modules.of_tenant("t")}
    assert one_active_version_each(deltas)[stubborn] == 0  # answered from context meanwhile
    follow_up = deltas.jobs.get(moved["job_id"])
    assert follow_up.progress["moved_from"]["job_id"] == queued.id
    run_job(w, follow_up.id)  # its own job trains it alone
    assert set(one_active_version_each(deltas).values()) == {1}


def test_a_failed_consolidation_waits_for_a_new_delta_or_the_retry_time(
    settings: Settings, deltas: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consolidation below the gate fails, and its deltas keep serving; an idle worker
    does not queue the same retrain again at its next scan (it used to, every ~15 s, for
    ever), but does once a new delta comes or `consolidate_retry_s` has passed."""

    def refuse_consolidations(ctx: TrainerContext, job: Job) -> Outcome:
        if job.kind == "consolidate":
            raise JobRefused("recall 0.50 below the gate 0.95")
        return stand_in(ctx, job)

    monkeypatch.setattr(handlers, "handle", refuse_consolidations)
    w = make_worker(settings, deltas)
    parent, delta, _fact = module_and_delta(w, deltas)
    due = (1, 0.0, 3600.0)  # every delta due at once; a failure waits an hour
    assert deltas.facts.consolidations_due(*due) == [(parent, "t")]
    failed = deltas.facts.queue_consolidation(parent, "t")
    assert failed is not None
    assert w.run_once()
    assert deltas.jobs.get(failed.id).status is JobStatus.FAILED
    assert deltas.modules.get(delta).active_version == 1  # still serving its fact

    assert deltas.facts.consolidations_due(*due) == []
    later = time.time() + 3601
    assert deltas.facts.consolidations_due(1, 0.0, 3600.0, now=later) == [(parent, "t")]
    time.sleep(0.01)  # the new delta is made after the failed job
    newer, _ = add(deltas, ["The colour of C is green."])
    run_job(w, newer)
    assert deltas.jobs.get(newer).module.startswith(parent + "-d")
    assert deltas.facts.consolidations_due(*due) == [(parent, "t")]
