"""Merged modules in the real Redis: requests queued once, staleness, the API's
refusals."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from loramem.errors import Conflict, InvalidRequest, NotFound
from loramem.names import module_id, module_name, served_name
from loramem.registry import Registry
from loramem.registry.jobs import JobStatus
from loramem.registry.merges import merged_module_name
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import to_bytes
from router.router import Router
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED, merged


def t(name: str) -> str:
    """The id of tenant t's module `name`."""
    return module_id("t", name)


def _published(registry: Registry, tenant: str, name: str, version: int = 1) -> None:
    module = module_id(tenant, name)
    job, ids = registry.facts.add(tenant, [f"{name} fact"], [None], [b""], module)
    registry.modules.publish(VersionInfo(module, version, tenant, ids, 1.0, NO_FILES, TRAINED), {})


def _publish_merge(registry: Registry, name: str, tenant: str, built_from: dict) -> None:  # type: ignore[type-arg]
    version = registry.modules.next_version(name)
    info = VersionInfo(
        name, version, tenant, [], math.nan, NO_FILES, merged(built_from), merged_from=built_from
    )
    registry.modules.publish(info, {})


def test_a_merge_is_queued_once_and_goes_stale_on_a_new_source_version(
    registry: Registry,
) -> None:
    _published(registry, "t", "a")
    _published(registry, "t", "b")
    job, queued = registry.merges.request("t", [t("b"), t("a")], "ties", None)
    again, queued_again = registry.merges.request("t", [t("a"), t("b")], "ties", [1.0, 1.0])
    assert queued and not queued_again and again.id == job.id
    assert job.kind == "merge" and registry.jobs.get(job.id).kind == "merge"
    spec = registry.merges.get(job.module)
    assert (spec.sources, spec.weights, spec.tenant) == ([t("a"), t("b")], [1.0, 1.0], "t")
    assert [m.name for m in registry.merges.of_tenant("t")] == [job.module]
    assert not registry.merges.is_current(spec)  # nothing published yet

    _publish_merge(registry, job.module, "t", registry.merges.source_versions("t", spec.sources))
    spec = registry.merges.get(job.module)
    assert registry.merges.is_current(spec)
    assert registry.modules.version(job.module, 1).fact_ids == []

    _published(registry, "t", "a", version=2)  # a source moves on: the cache is stale
    assert not registry.merges.is_current(registry.merges.get(job.module))
    rebuild, queued = registry.merges.request("t", [t("a"), t("b")], "ties", None)
    assert queued and rebuild.id != job.id and rebuild.module == job.module

    _publish_merge(registry, job.module, "t", {t("a"): 2, t("b"): 1})
    assert registry.merges.is_current(registry.merges.get(job.module))
    registry.modules.retire(t("b"), "t")  # a source retired: stale again
    assert not registry.merges.is_current(registry.merges.get(job.module))
    with pytest.raises(Conflict):
        registry.merges.request("t", [t("a"), t("b")], "ties", None)


@pytest.mark.parametrize("end", ["failed", "cancelled"])
def test_a_failed_or_cancelled_build_may_be_queued_again(registry: Registry, end: str) -> None:
    _published(registry, "t", "a")
    _published(registry, "t", "b")
    job, _ = registry.merges.request("t", [t("a"), t("b")], "ties", None)
    if end == "failed":
        registry.jobs.transition(job.id, JobStatus.FAILED, error="boom")
    else:
        registry.jobs.cancel(job.id, "t")
    retry, queued = registry.merges.request("t", [t("a"), t("b")], "ties", None)
    assert queued and retry.id != job.id


def test_refused_merges_write_nothing(registry: Registry, redis_client: redis.Redis) -> None:
    _published(registry, "t", "a")
    _published(registry, "u", "foreign")
    registry.facts.add("t", ["x"], [None], [b""], t("unpublished"))
    before = redis_client.dbsize()
    with pytest.raises(NotFound):
        registry.merges.request("t", [t("a"), module_id("u", "foreign")], "ties", None)
    with pytest.raises(NotFound):
        registry.merges.request("t", [t("a"), t("foreign")], "ties", None)
    with pytest.raises(NotFound):
        registry.merges.request("t", [t("a"), t("nosuch")], "ties", None)
    with pytest.raises(Conflict):
        registry.merges.request("t", [t("a"), t("unpublished")], "ties", None)
    assert redis_client.dbsize() == before


def test_facts_cannot_be_posted_into_a_merged_module(
    registry: Registry, redis_client: redis.Redis
) -> None:
    _published(registry, "t", "a")
    _published(registry, "t", "b")
    job, _ = registry.merges.request("t", [t("a"), t("b")], "ties", None)
    with pytest.raises(Conflict):
        registry.facts.add("t", ["y"], [None], [b""], job.module)
    with pytest.raises(InvalidRequest):  # no merges of merges
        _publish_merge(registry, job.module, "t", {t("a"): 1, t("b"): 1})
        registry.merges.request("t", [t("a"), job.module], "ties", None)
    assert registry.queue.backlog()[0] == 3  # a, b and the one merge


# ------------------------------------------------ router (fake embedder, real Redis)

ANN = "The phone number of Ann Lee is 555-0101."
BOB = "The phone number of Bob Ray is 555-0202."
BOTH = "What are the phone numbers of Ann Lee and Bob Ray?"


def _publish_facts(registry: Registry, router: Router, name: str, text: str, version: int):  # type: ignore[no-untyped-def]
    module = t(name)
    vector = to_bytes(router.embed([text])[0])
    _job, ids = registry.facts.add("t", [text], [None], [vector], module)
    registry.modules.publish(VersionInfo(module, version, "t", ids, 1.0, NO_FILES, TRAINED), {})
    router.apply_published("t", module, version)


def test_the_router_serves_a_current_merge_and_asks_for_a_stale_one(
    registry: Registry, fake_embedder
) -> None:  # type: ignore[no-untyped-def]
    router = Router(registry, fake_embedder, "base", threshold=0.3, merge_margin=0.5)
    _publish_facts(registry, router, "ann", ANN, 1)
    _publish_facts(registry, router, "bob", BOB, 1)
    plain = router.route("t", "auto", BOTH)
    assert plain.outcome == "module" and not plain.merge_wanted
    wanted = router.route("t", "auto", BOTH, merge=True)
    both = [t("ann"), t("bob")]
    assert wanted.outcome == "module" and sorted(wanted.merge_wanted) == both
    assert router.route("t", "auto", ANN, merge=True).merge_wanted in ([], both)

    job, _ = registry.merges.request("t", wanted.merge_wanted, "ties", None)
    _publish_merge(registry, job.module, "t", {t("ann"): 1, t("bob"): 1})
    router.apply_published("t", job.module, 1)
    merged = router.route("t", "auto", BOTH, merge=True)
    assert (merged.outcome, merged.target) == ("merged", served_name(job.module, 1, NO_FILES))
    assert merged.header == f"{module_name(job.module)}@v1"
    assert router.route("t", "auto", BOTH).outcome == "module"  # opt-in only
    oracle = router.route("t", module_name(job.module), "anything")
    assert oracle.target == served_name(job.module, 1, NO_FILES)
    assert router.index_stats("t")[0] == 2  # the merged module owns no facts

    _publish_facts(registry, router, "ann", ANN.replace("0101", "0111"), 2)
    stale = router.route("t", "auto", BOTH, merge=True)
    assert stale.outcome == "module" and sorted(stale.merge_wanted) == both


# ------------------------------------------------------ HTTP API (no engine)


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings, embedder=fake_embedder)) as test_client:
        yield test_client


def test_post_merges_queues_one_build_and_lists_it(client: TestClient, registry: Registry) -> None:
    _published(registry, "t", "a")
    _published(registry, "t", "b")
    headers = {"x-loramem-tenant": "t"}
    reply = client.post("/merges", json={"modules": ["a", "b"]}, headers=headers)
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["module"] == module_name(merged_module_name("t", [t("a"), t("b")], "ties"))
    again = client.post("/merges", json={"modules": ["b", "a"], "weights": [1, 1]}, headers=headers)
    assert again.json() == body
    listed = client.get("/merges", headers=headers).json()
    assert [(m["name"], m["sources"], m["current"], m["served_name"]) for m in listed] == [
        (body["module"], ["a", "b"], False, None)
    ]
    assert client.get("/merges", headers={"x-loramem-tenant": "u"}).json() == []


BAD_MERGES = [
    ({"modules": ["a"]}, 400),
    ({"modules": ["a", "a"]}, 400),
    ({"modules": ["a", "b"], "combination": "svd"}, 400),
    ({"modules": ["a", "b"], "combination": "cat"}, 400),  # rank 16 > the engine's 8
    ({"modules": ["a", "b"], "weights": [1.0]}, 400),
    ({"modules": ["a", "b"], "extra": 1}, 400),
    ({"modules": ["a", "Not A Name"]}, 400),
    ({"modules": ["a", "nosuch"]}, 404),
    ({"modules": ["a", "foreign"]}, 404),
    ({"modules": ["a", "unpublished"]}, 409),
]


@pytest.mark.parametrize(("body", "status"), BAD_MERGES)
def test_bad_merges_are_refused_and_nothing_changes(
    client: TestClient,
    registry: Registry,
    redis_client: redis.Redis,
    body: dict,
    status: int,  # type: ignore[type-arg]
) -> None:
    _published(registry, "t", "a")
    _published(registry, "t", "b")
    _published(registry, "u", "foreign")
    registry.facts.add("t", ["x"], [None], [b""], t("unpublished"))
    before = {k: redis_client.type(k) for k in redis_client.keys()}
    reply = client.post("/merges", json=body, headers={"x-loramem-tenant": "t"})
    assert reply.status_code == status, reply.text
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert {k: redis_client.type(k) for k in redis_client.keys()} == before
    assert registry.queue.backlog()[0] == 4


def test_opted_in_requests_queue_one_build_and_rag_none(
    client: TestClient, registry: Registry, redis_client: redis.Redis
) -> None:
    router = client.app.state.router  # type: ignore[attr-defined]
    for module, text in (("ann", ANN), ("bob", BOB)):
        _publish_facts(registry, router, module, text, 1)
    chat = {"model": "auto", "messages": [{"role": "user", "content": BOTH}]}
    headers = {"x-loramem-tenant": "t"}
    rag_options = {"mode": "rag", "merge": True}
    rag = client.post(
        "/v1/chat/completions", json={**chat, "loramem": rag_options}, headers=headers
    )
    assert rag.status_code == 503  # no engine here; routing happened first
    assert registry.merges.of_tenant("t") == []
    for _ in range(3):
        reply = client.post("/v1/chat/completions", json={**chat, "loramem": {"merge": True}},
                            headers=headers)  # fmt: skip
        assert reply.status_code == 503
    assert [m.sources for m in registry.merges.of_tenant("t")] == [[t("ann"), t("bob")]]
    assert registry.queue.backlog()[0] == 3  # ann, bob and one merge build
    metrics = client.get("/metrics").text
    assert "loramem_merge_builds_requested_total 1.0" in metrics
