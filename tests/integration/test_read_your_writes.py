"""Read your writes (router/pending.py) over the real registry, events and embedder:
a change is answered from context from its event on, until the version that holds it."""

from __future__ import annotations

import threading

import pytest

from loramem.names import module_id, served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router import answer
from router.embedder import SentenceEmbedder, to_bytes
from router.pending import PendingFacts
from router.router import RouteDecision, Router
from server.reconcile import EventFollower
from tests.recipes import NO_FILES, TRAINED
from tests.services import single_and_cluster  # noqa: F401  (each test on both)

ANN = "The phone number of Ann Lee is 555-0101."
ANN_NEW = "The phone number of Ann Lee is 555-0199."
BOB = "The phone number of Bob Ray is 555-0202."
ASK_ANN = "What is the phone number of Ann Lee?"
ASK_BOB = "What is the phone number of Bob Ray?"
PHONES = module_id("t", "phones")


@pytest.fixture(scope="module")
def embedder() -> SentenceEmbedder:
    return SentenceEmbedder(threads=1)


@pytest.fixture
def system(
    registry: Registry, settings: Settings, embedder: SentenceEmbedder
) -> tuple[Router, PendingFacts, EventFollower]:
    router = Router.from_settings(registry, embedder, settings)
    pending = PendingFacts(registry, embedder.dim)
    follower = EventFollower(registry, router, threading.Event(), pending=pending)
    return router, pending, follower


def ask(router: Router, pending: PendingFacts, query: str, interim: str = "rag") -> RouteDecision:
    return answer.route(
        router, "t", "auto", query, answer.Modes("lora"), False, pending, interim
    ).decision


def post(registry: Registry, router: Router, texts: list[str], module: str) -> tuple[str, list]:
    vectors = [to_bytes(v) for v in router.embed(texts)]
    job, ids = registry.facts.add("t", texts, [None] * len(texts), vectors, module)
    return job.id, ids


def publish(registry: Registry, module: str, version: int, ids: list[str], job_id: str) -> None:
    info = VersionInfo(module, version, "t", ids, 1.0, NO_FILES, TRAINED)
    registry.jobs.skip_to_publishing(job_id, {})
    registry.modules.publish(info, {}, job_id=job_id)


def test_a_posted_fact_is_answered_from_context_until_its_version_is_published(
    registry: Registry, system: tuple[Router, PendingFacts, EventFollower]
) -> None:
    router, pending, follower = system
    job, ids = post(registry, router, [ANN], PHONES)
    assert ask(router, pending, ASK_ANN).outcome == "below_threshold"  # not seen yet
    follower.step(block_ms=10)
    decision = ask(router, pending, ASK_ANN)
    assert (decision.target, decision.outcome) == (router.base_name, "pending")
    assert [h.fact_id for h in decision.candidates] == ids
    assert answer.effective_mode(decision, "lora") == "rag"
    assert ask(router, pending, ASK_ANN, interim="off").outcome == "below_threshold"
    # Another tenant never sees it.
    other = answer.route(
        router, "u", "auto", ASK_ANN, answer.Modes("lora"), False, pending, "rag"
    ).decision
    assert other.outcome == "below_threshold"

    publish(registry, PHONES, 1, ids, job)
    follower.step(block_ms=10)
    assert not pending.any("t")
    decision = ask(router, pending, ASK_ANN)
    assert (decision.target, decision.outcome) == (served_name(PHONES, 1, NO_FILES), "module")


def test_an_edit_is_never_answered_by_the_old_version_alone(
    registry: Registry, system: tuple[Router, PendingFacts, EventFollower]
) -> None:
    router, pending, follower = system
    job, ids = post(registry, router, [ANN, BOB], PHONES)
    publish(registry, PHONES, 1, ids, job)
    # A job staged before the edit, published after it: it may hold the old text.
    early, _ = post(registry, router, ["Grass looks green today."], PHONES)
    edit = registry.facts.replace("t", ids[0], ANN_NEW, to_bytes(router.embed([ANN_NEW])[0]))
    follower.step(block_ms=10)
    assert pending.stale("t") == {ids[0]: "edit"}
    for interim, target in (
        ("rag", router.base_name),
        ("hybrid", served_name(PHONES, 1, NO_FILES)),
    ):
        decision = ask(router, pending, ASK_ANN, interim)
        assert (decision.target, decision.outcome) == (target, "pending")
        assert decision.candidates[0].fact_id == ids[0]
    assert ask(router, pending, ASK_BOB).outcome == "module"  # the unchanged fact

    held = [f.id for f in registry.facts.of_module(PHONES, "t")]
    publish(registry, PHONES, 2, held, early)
    follower.step(block_ms=10)
    assert pending.stale("t") == {ids[0]: "edit"}  # the early job's version may be old
    assert ask(router, pending, ASK_ANN).outcome == "pending"
    publish(registry, PHONES, 3, held, edit.id)
    follower.step(block_ms=10)
    assert not pending.any("t")
    assert ask(router, pending, ASK_ANN).target == served_name(PHONES, 3, NO_FILES)


def test_a_deleted_fact_is_not_answered_from_its_module(
    registry: Registry, system: tuple[Router, PendingFacts, EventFollower]
) -> None:
    router, pending, follower = system
    job, ids = post(registry, router, [ANN, BOB], PHONES)
    publish(registry, PHONES, 1, ids, job)
    follower.step(block_ms=10)
    delete = registry.facts.delete("t", ids[0])
    follower.step(block_ms=10)
    decision = ask(router, pending, ASK_ANN, interim="hybrid")
    assert (decision.target, decision.outcome) == (router.base_name, "pending")
    assert ids[0] not in [h.fact_id for h in decision.candidates]
    publish(registry, PHONES, 2, [ids[1]], delete.id)
    follower.step(block_ms=10)
    assert not pending.any("t")


def test_a_restarted_gateway_rebuilds_the_facts_no_version_holds(
    registry: Registry, system: tuple[Router, PendingFacts, EventFollower], settings: Settings
) -> None:
    router, _pending, _follower = system
    job, ids = post(registry, router, [ANN], PHONES)
    publish(registry, PHONES, 1, ids, job)
    post(registry, router, [BOB], PHONES)
    restarted = PendingFacts(registry, router.embedder.dim)
    EventFollower(registry, router, threading.Event(), pending=restarted)  # loads at start
    assert restarted.count("t") == 1
    assert ask(router, restarted, ASK_BOB).outcome == "pending"
    assert ask(router, restarted, ASK_ANN).outcome == "module"


def test_a_fact_the_gate_moved_out_is_answered_from_context_until_its_own_module_publishes(
    registry: Registry, system: tuple[Router, PendingFacts, EventFollower]
) -> None:
    """The per-fact gate (trainer/handlers.py move_out): a version of PHONES that lacks a
    missed fact, published before the fact's own module, never leaves it unanswerable; an
    edit pending on it is cleared by its new module's publish, not stuck on the old one."""
    router, pending, follower = system
    job, ids = post(registry, router, [ANN, BOB], PHONES)
    publish(registry, PHONES, 1, ids, job)
    edit = registry.facts.replace("t", ids[0], ANN_NEW, to_bytes(router.embed([ANN_NEW])[0]))
    moved = registry.facts.split(
        PHONES, "t", [ids[0]], {}, moved_from={"module": "phones", "reason": "not recalled"}
    )
    assert registry.jobs.get(moved.id).progress["moved_from"]["reason"] == "not recalled"
    publish(registry, PHONES, 2, [ids[1]], edit.id)  # the edit's job, without the missed fact
    follower.step(block_ms=10)
    decision = ask(router, pending, ASK_ANN)
    assert (decision.target, decision.outcome) == (router.base_name, "pending")
    assert decision.candidates[0].fact_id == ids[0]  # the new text, from context
    assert ask(router, pending, ASK_BOB).outcome == "module"

    publish(registry, moved.module, 1, [ids[0]], moved.id)
    follower.step(block_ms=10)
    assert not pending.any("t")
    assert ask(router, pending, ASK_ANN).target == served_name(moved.module, 1, NO_FILES)
