"""Module ids and names: per-tenant names, ids unique across tenants, served names that
carry the version's digest, and what a tenant is shown of an engine-side name."""

from __future__ import annotations

import hashlib

from loramem.names import (
    DIGEST_HEX,
    delta_id,
    is_module_of,
    made_as,
    module_id,
    module_name,
    names_checksum,
    parse_served_name,
    parse_version_name,
    public_served_name,
    served_name,
    version_name,
    version_of,
)

SUM = hashlib.sha256(b"weights").hexdigest()
OTHER = hashlib.sha256(b"other weights").hexdigest()


def test_one_name_in_two_tenants_is_two_modules() -> None:
    a, b = module_id("a", "notes"), module_id("b", "notes")
    assert a != b and module_name(a) == module_name(b) == "notes"
    assert is_module_of("a", a) and not is_module_of("b", a)
    # a tenant whose name prefixes another's owns none of its modules
    assert not is_module_of("a", module_id("a.b", "notes"))
    assert not is_module_of("a", "notes") and not is_module_of("a", module_id("a", ""))


def test_the_engine_name_holds_the_id_and_the_tenant_sees_the_name() -> None:
    engine = served_name(module_id("acme", "notes"), 3, SUM)
    assert engine == f"acme~notes@v3.{SUM[:DIGEST_HEX]}"
    assert parse_served_name(engine) == (module_id("acme", "notes"), 3, SUM[:DIGEST_HEX])
    assert public_served_name(engine) == "notes@v3"
    assert "acme" not in public_served_name(engine)
    assert public_served_name("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_other_weights_under_one_version_number_get_another_served_name() -> None:
    module = module_id("acme", "notes")
    mine, theirs = served_name(module, 3, SUM), served_name(module, 3, OTHER)
    assert mine != theirs
    assert public_served_name(mine) == public_served_name(theirs) == "notes@v3"
    parsed = parse_served_name(mine)
    assert parsed is not None
    assert names_checksum(parsed, SUM) and not names_checksum(parsed, OTHER)
    assert not names_checksum(parsed, "")  # a record without a checksum names nothing


def test_version_names_and_served_names_parse_apart() -> None:
    module = module_id("acme", "notes")
    assert version_name(module, 3) == "acme~notes@v3"
    assert parse_version_name("notes@v3") == ("notes", 3)
    assert parse_served_name("notes@v3") is None  # no digest: not an engine's name
    assert parse_version_name(served_name(module, 3, SUM)) is None
    # An engine's name from before names carried digests still tells its version.
    assert version_of("acme~notes@v3") == version_of(served_name(module, 3, SUM)) == (module, 3)
    for name in [
        "notes@v3.",
        f"notes@v3.{SUM[: DIGEST_HEX - 1]}",
        f"notes@v3.{SUM[: DIGEST_HEX + 1]}",
        f"notes@v3.{SUM[:DIGEST_HEX].upper()}",
        f"notes@vx.{SUM[:DIGEST_HEX]}",
        "base",
    ]:
        assert parse_served_name(name) is None, name
        assert version_of(name) is None, name


def test_made_as_tells_deltas_and_splits_from_modules() -> None:
    delta = module_name(delta_id(module_id("acme", "m-0123456789")))
    assert made_as(delta) == "delta"
    assert made_as("m-0123456789-s0a1b2c") == "split"
    assert made_as(delta + "-s0a1b2c") == "split"  # a split of a delta is a split
    for name in ("m-0123456789", "notes", "notes-dx", "mx-0123"):
        assert made_as(name) == "module"
