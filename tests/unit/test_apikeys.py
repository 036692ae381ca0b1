"""API keys without Redis: their shape, hashing, the Authorization header, roles, and the
rule that a gateway without keys listens on loopback only."""

from __future__ import annotations

import pytest

from loramem.registry.apikeys import (
    ApiKey,
    Role,
    VerifiedKeys,
    bearer_key,
    key_hash,
    key_id,
    looks_like_key,
    new_key,
)
from loramem.settings import Settings
from server.app import is_loopback, refuse_open_gateway


def test_keys_are_random_prefixed_and_hashed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    for key in keys:
        assert key.startswith("lm-") and len(key) >= 40 and looks_like_key(key)
        assert len(key_hash(key)) == 64 and key not in key_hash(key)
        assert key_id(key) == key_hash(key)[:16]
    assert key_hash("lm-a") != key_hash("lm-b")


KEY = "lm-" + "a1_-" * 11


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f"Bearer {KEY}", KEY),
        (f"bearer {KEY}", KEY),
        (f"  Bearer   {KEY}  ", KEY),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {KEY}", None),
        (KEY, None),
        ("Bearer sk-not-ours-0123456789012345678901234567890", None),
        (f"Bearer {KEY} extra", None),
        ("Bearer lm-short", None),
        ("Bearer lm-" + "a" * 40 + "!", None),
    ],
)
def test_bearer_header(header: str | None, expected: str | None) -> None:
    assert bearer_key(header) == expected


def test_each_role_may_do_what_the_roles_before_it_may() -> None:
    allowed = {(have, need) for have in Role for need in Role if have.allows(need)}
    assert allowed == {
        (Role.reader, Role.reader),
        (Role.writer, Role.reader),
        (Role.writer, Role.writer),
        (Role.admin, Role.reader),
        (Role.admin, Role.writer),
        (Role.admin, Role.admin),
    }


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.5", False),
        ("gateway.example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_auth_off_is_for_loopback_only() -> None:
    refuse_open_gateway(Settings())  # the laptop default: 127.0.0.1, auth off
    refuse_open_gateway(Settings(gateway_host="0.0.0.0", auth="required"))
    refuse_open_gateway(Settings(gateway_host="0.0.0.0", allow_open_gateway=True))
    with pytest.raises(SystemExit, match="LORAMEM_AUTH=required"):
        refuse_open_gateway(Settings(gateway_host="0.0.0.0"))


def test_auth_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().auth == "off"
    monkeypatch.setenv("LORAMEM_AUTH", "required")
    assert Settings().auth == "required"
    monkeypatch.setenv("LORAMEM_AUTH", "maybe")
    with pytest.raises(ValueError):
        Settings()


def test_verified_keys_are_remembered_for_their_ttl_and_forgotten_on_a_no() -> None:
    now = [0.0]
    verified = VerifiedKeys(ttl_s=300, timer=lambda: now[0])
    key, other = new_key(), new_key()
    record = ApiKey(key_id(key), "a", Role.reader, "", 0.0, None, None)
    verified.remember(key, record)
    assert verified.recall(key) == record and verified.recall(other) is None
    now[0] = 299.0
    assert verified.recall(key) == record
    now[0] = 301.0  # verified too long ago
    assert verified.recall(key) is None
    verified.remember(key, record)
    verified.remember(key, None)  # Redis says revoked or unknown
    assert verified.recall(key) is None
    off = VerifiedKeys(ttl_s=0)
    off.remember(key, record)
    assert off.recall(key) is None
