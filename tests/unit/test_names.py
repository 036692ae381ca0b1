"""Module ids and names: per-tenant names, ids unique across tenants, and what a tenant is
shown of an engine-side name."""

from __future__ import annotations

from loramem.names import (
    is_module_of,
    module_id,
    module_name,
    parse_served_name,
    public_served_name,
    served_name,
)


def test_one_name_in_two_tenants_is_two_modules() -> None:
    a, b = module_id("a", "notes"), module_id("b", "notes")
    assert a != b and module_name(a) == module_name(b) == "notes"
    assert is_module_of("a", a) and not is_module_of("b", a)
    # a tenant whose name prefixes another's owns none of its modules
    assert not is_module_of("a", module_id("a.b", "notes"))
    assert not is_module_of("a", "notes") and not is_module_of("a", module_id("a", ""))


def test_the_engine_name_holds_the_id_and_the_tenant_sees_the_name() -> None:
    engine = served_name(module_id("acme", "notes"), 3)
    assert parse_served_name(engine) == (module_id("acme", "notes"), 3)
    assert public_served_name(engine) == "notes@v3"
    assert "acme" not in public_served_name(engine)
    assert public_served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
