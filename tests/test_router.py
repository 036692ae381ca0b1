"""Routing decisions with a fake embedder over the real registry."""

import pytest

from loramem.errors import ModelNotFound
from loramem.registry import Registry, VersionInfo
from router.embedder import to_bytes
from router.index import TenantIndex
from router.router import Router


def publish(registry: Registry, router: Router, tenant: str, texts: list[str]) -> str:
    vectors = router.embedder.embed(texts)
    job, ids = registry.add_facts(
        tenant, texts, [None] * len(texts), [to_bytes(v) for v in vectors]
    )
    registry.publish_version(VersionInfo(job.module, 1, tenant, ids, 1.0, "c", {}), {})
    router.apply_published(tenant, job.module, 1)
    return job.module


@pytest.fixture
def router(registry: Registry, fake_embedder) -> Router:
    return Router(registry, fake_embedder, "base-model", threshold=0.4)


def test_nearest_fact_picks_its_module(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", ["The phone number of Jeffrey Buck is 603-556-7631."])
    decision = router.route("t", "auto", "What is the phone number of Jeffrey Buck?")
    assert (decision.target, decision.outcome) == (f"{module}@v1", "module")
    assert decision.score is not None and decision.score > 0.4


def test_unrelated_query_goes_to_base(registry: Registry, router: Router) -> None:
    publish(registry, router, "t", ["The phone number of Jeffrey Buck is 603-556-7631."])
    decision = router.route("t", "auto", "Capital city of France?")
    assert (decision.target, decision.header, decision.outcome) == (
        "base-model",
        "base",
        "below_threshold",
    )


def test_routing_never_crosses_tenants(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "a", ["The phone number of Jeffrey Buck is 603-556-7631."])
    assert router.route("b", "auto", "What is the phone number of Jeffrey Buck?").module is None
    with pytest.raises(ModelNotFound):
        router.route("b", module, "x")


def test_named_module_and_base(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", ["a fact"])
    assert router.route("t", module, "anything").target == f"{module}@v1"
    assert router.route("t", "base-model", "anything").header == "base"
    with pytest.raises(ModelNotFound):
        router.route("t", f"{module}@vX", "anything")


def test_index_remove_keeps_the_other_rows(fake_embedder) -> None:
    index = TenantIndex(fake_embedder.dim)
    vectors = fake_embedder.embed(["alpha one", "beta two", "gamma three"])
    for i, name in enumerate(["a", "b", "c"]):
        index.upsert(name, "m", vectors[i])
    index.remove("a")
    assert index.facts_of("m") == {"b", "c"}
    assert index.search(vectors[2], 1)[0].fact_id == "c"


def test_retired_module_is_no_longer_routed(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", ["The phone number of Jeffrey Buck is 603-556-7631."])
    router.apply_retired(module)
    assert router.route("t", "auto", "What is the phone number of Jeffrey Buck?").module is None
    with pytest.raises(ModelNotFound):
        router.route("t", module, "x")


def test_a_new_version_replaces_the_facts_it_no_longer_holds(
    registry: Registry, router: Router
) -> None:
    module = publish(registry, router, "t", ["The phone number of Jeffrey Buck is 603-556-7631."])
    kept = registry.add_facts(
        "t",
        ["Grass looks green today."],
        [None],
        [to_bytes(router.embed(["Grass looks green today."])[0])],
        module,
    )[1]
    registry.publish_version(VersionInfo(module, 2, "t", kept, 1.0, "c", {}), {})
    router.apply_published("t", module, 2)
    assert router.route("t", "auto", "What is the phone number of Jeffrey Buck?").module is None
    assert router.route("t", "auto", "Does grass look green?").target == f"{module}@v2"
    router.apply_published("t", module, 1)  # a late, older event changes nothing
    assert router.route("t", "auto", "Does grass look green?").target == f"{module}@v2"
