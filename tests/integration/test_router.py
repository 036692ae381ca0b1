"""Routing decisions with a fake embedder over the real registry, for both index backends."""

import pytest

from loramem.errors import ModelNotFound
from loramem.names import module_id, module_name, served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from router.embedder import to_bytes
from router.index import index_factory
from router.router import Router
from tests.recipes import NO_FILES, TRAINED
from tests.services import single_and_cluster  # noqa: F401  (each test on both)

JEFFREY = "The phone number of Jeffrey Buck is 603-556-7631."


def publish(
    registry: Registry, router: Router, tenant: str, texts: list[str], module: str | None = None
) -> str:
    """Publish `texts` as a module (`module`: a name in the tenant's namespace); its id."""
    vectors = router.embedder.embed(texts)
    target = module_id(tenant, module) if module else None
    job, ids = registry.facts.add(
        tenant, texts, [None] * len(texts), [to_bytes(v) for v in vectors], target
    )
    registry.modules.publish(VersionInfo(job.module, 1, tenant, ids, 1.0, NO_FILES, TRAINED), {})
    router.apply_published(tenant, job.module, 1)
    return job.module


@pytest.fixture(params=["exact", "hnsw"])
def router(request: pytest.FixtureRequest, registry: Registry, fake_embedder) -> Router:
    return Router(
        registry, fake_embedder, "base-model", threshold=0.4, new_index=index_factory(request.param)
    )


def test_nearest_fact_picks_its_module(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", [JEFFREY])
    decision = router.route("t", "auto", "What is the phone number of Jeffrey Buck?")
    assert (decision.target, decision.outcome) == (served_name(module, 1, NO_FILES), "module")
    assert decision.score is not None and decision.score > 0.4
    assert [m.module for m in decision.modules] == [module]
    assert decision.candidates_header == f"{module_name(module)}:{decision.modules[0].score:.2f}"


def test_unrelated_query_goes_to_base(registry: Registry, router: Router) -> None:
    publish(registry, router, "t", [JEFFREY])
    decision = router.route("t", "auto", "Capital city of France?")
    assert (decision.target, decision.header, decision.outcome) == (
        "base-model",
        "base",
        "below_threshold",
    )


def test_top_module_wins_and_the_others_are_reported(registry: Registry, router: Router) -> None:
    phones = publish(registry, router, "t", [JEFFREY, "The phone number of Ann Lee is 555-0101."])
    grass = publish(registry, router, "t", ["Grass looks green today."], module="grass")
    decision = router.route("t", "auto", "What is the phone number of Jeffrey Buck?")
    assert decision.module == phones
    assert decision.modules[0].module == phones
    assert decision.candidates_header.startswith(f"{module_name(phones)}:")
    assert router.route("t", "auto", "Does grass look green?").module == grass


def test_routing_never_crosses_tenants(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "a", [JEFFREY])
    assert router.route("b", "auto", "What is the phone number of Jeffrey Buck?").module is None
    with pytest.raises(ModelNotFound):
        router.route("b", module_name(module), "x")


def test_near_identical_facts_of_another_tenant_are_invisible(
    registry: Registry, router: Router
) -> None:
    a = publish(registry, router, "a", [JEFFREY])
    b = publish(registry, router, "b", ["The phone number of Jeffrey Buck is 603-556-7632."])
    for question in (JEFFREY, "What is the phone number of Jeffrey Buck?", "Jeffrey Buck phone"):
        decision = router.route("b", "auto", question)
        assert decision.module == b
        assert module_name(a) not in decision.candidates_header
        assert {h.module for h in decision.candidates} == {b}
    for name in (module_name(a), f"{module_name(a)}@v1", a, f"{a}@v1", served_name(a, 1, NO_FILES)):
        with pytest.raises(ModelNotFound):
            router.route("b", name, "What is the phone number of Jeffrey Buck?")
    assert router.active_modules("b") == {b: 1}


def test_named_module_and_base(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", ["a fact"])
    named = router.route("t", module_name(module), "anything")
    assert (named.target, named.header) == (
        served_name(module, 1, NO_FILES),
        f"{module_name(module)}@v1",
    )
    assert router.route("t", "base-model", "anything").header == "base"
    for model in (f"{module_name(module)}@vX", module):  # by name, not by id
        with pytest.raises(ModelNotFound):
            router.route("t", model, "anything")


def test_retired_module_is_no_longer_routed(registry: Registry, router: Router) -> None:
    module = publish(registry, router, "t", [JEFFREY])
    router.apply_retired(module)
    assert router.route("t", "auto", "What is the phone number of Jeffrey Buck?").module is None
    with pytest.raises(ModelNotFound):
        router.route("t", module_name(module), "x")


def test_a_new_version_replaces_the_facts_it_no_longer_holds(
    registry: Registry, router: Router
) -> None:
    module = publish(registry, router, "t", [JEFFREY])
    kept = registry.facts.add(
        "t",
        ["Grass looks green today."],
        [None],
        [to_bytes(router.embed(["Grass looks green today."])[0])],
        module,
    )[1]
    registry.modules.publish(VersionInfo(module, 2, "t", kept, 1.0, NO_FILES, TRAINED), {})
    router.apply_published("t", module, 2)
    assert router.route("t", "auto", "What is the phone number of Jeffrey Buck?").module is None
    assert router.route("t", "auto", "Does grass look green?").target == served_name(
        module, 2, NO_FILES
    )
    router.apply_published("t", module, 1)  # a late, older event changes nothing
    assert router.route("t", "auto", "Does grass look green?").target == served_name(
        module, 2, NO_FILES
    )
    assert router.index_stats("t")[0] == 1
