"""API keys: who may call the gateway, for which tenant, in which role.

A key is shown once, when it is made; Redis keeps only its sha256. The key's id is the
first 16 hex digits of that hash, so a request finds its record in one read, and the
full hash is compared before the record counts. Revoking keeps the record (for
`keys list`) and takes effect on the next request: every request reads Redis. Only when
Redis cannot be reached does a gateway fall back on the keys it verified lately
(`VerifiedKeys`), so that chat goes on through an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import redis
from cachetools import TTLCache

from loramem import keys
from loramem.errors import InvalidRequest, NotFound
from loramem.registry.codec import decode

KEY_PREFIX = "lm-"
_KEY = re.compile(r"^lm-[A-Za-z0-9_-]{32,128}$")
_ID = re.compile(r"^[0-9a-f]{16}$")
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KEY_NAME_MAX_CHARS = 100
# A key's last use is written at most this often, so that reads do not all become writes.
LAST_USED_EVERY_S = 60.0
# Keys a gateway remembers as verified (VerifiedKeys); past this, the least recent go.
VERIFIED_KEYS_MAX = 10_000


class Role(StrEnum):
    """Each role may do everything the roles before it may."""

    reader = "reader"  # completions, models, listing the tenant's facts, modules, jobs, merges
    writer = "writer"  # also posting, editing and deleting facts, documents, merges
    admin = "admin"  # also key management and operations across tenants (/metrics)

    def allows(self, needed: Role) -> bool:
        order = list(Role)
        return order.index(self) >= order.index(needed)


@dataclass(frozen=True)
class ApiKey:
    """A key's record; never the key itself, nor its hash."""

    id: str
    tenant: str
    role: Role
    name: str
    created_at_s: float
    last_used_s: float | None
    revoked_at_s: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at_s is not None

    def public(self) -> dict:
        return {
            "id": self.id,
            "tenant": self.tenant,
            "role": self.role.value,
            "name": self.name,
            "created_at_s": self.created_at_s,
            "last_used_s": self.last_used_s,
            "revoked": self.revoked,
            "revoked_at_s": self.revoked_at_s,
        }


def new_key() -> str:
    """256 random bits, with a prefix that secret scanners and people recognise."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id(key: str) -> str:
    return key_hash(key)[:16]


def looks_like_key(text: str) -> bool:
    return bool(_KEY.match(text))


def bearer_key(authorization: str | None) -> str | None:
    """The key of an `Authorization: Bearer <key>` header; None for anything else."""
    if not authorization:
        return None
    scheme, _, credentials = authorization.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not looks_like_key(credentials):
        return None
    return credentials


class ApiKeyStore:
    def __init__(self, client: redis.Redis) -> None:
        self._redis = client

    def create(self, tenant: str, role: Role | str, name: str = "") -> tuple[str, ApiKey]:
        """A new key and its record. The key is returned here once and stored nowhere."""
        if not TENANT.match(tenant):
            raise InvalidRequest("tenant must be 1-64 letters, digits, '_', '.' or '-'", "tenant")
        if role not in set(Role):
            raise InvalidRequest(f"role must be one of {', '.join(Role)}", "role")
        if len(name) > KEY_NAME_MAX_CHARS:
            raise InvalidRequest(f"name is over {KEY_NAME_MAX_CHARS} characters", "name")
        key = new_key()
        record = ApiKey(key_id(key), tenant, Role(role), name, time.time(), None, None)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.api_key(record.id),
                mapping={
                    "hash": key_hash(key),
                    "tenant": tenant,
                    "role": record.role.value,
                    "name": name,
                    "created_at_s": record.created_at_s,
                },
            )
            pipe.sadd(keys.api_keys(), record.id)
            pipe.execute()
        return key, record

    def authenticate(self, key: str) -> ApiKey | None:
        """The record of a valid, unrevoked key; None for any other string."""
        if not looks_like_key(key):
            return None
        digest = key_hash(key)
        fields = self._redis.hgetall(keys.api_key(digest[:16]))
        stored = fields.get(b"hash", b"")
        if not stored or not hmac.compare_digest(stored, digest.encode()):
            return None
        record = _record(digest[:16], fields)
        if record.revoked:
            return None
        now = time.time()
        if record.last_used_s is None or now - record.last_used_s >= LAST_USED_EVERY_S:
            self._redis.hset(keys.api_key(record.id), "last_used_s", now)
        return record

    def get(self, key_or_id: str) -> ApiKey:
        """A record by its id, or by the key itself."""
        found = key_id(key_or_id) if looks_like_key(key_or_id) else key_or_id
        fields = self._redis.hgetall(keys.api_key(found)) if _ID.match(found) else {}
        if not fields:
            raise NotFound(f"API key not found: {key_or_id if _ID.match(key_or_id) else '...'}")
        return _record(found, fields)

    def all(self) -> list[ApiKey]:
        ids = sorted(decode(i) for i in self._redis.smembers(keys.api_keys()))
        with self._redis.pipeline(transaction=False) as pipe:
            for i in ids:
                pipe.hgetall(keys.api_key(i))
            replies = pipe.execute()
        records = [_record(i, f) for i, f in zip(ids, replies, strict=True) if f]
        return sorted(records, key=lambda r: r.created_at_s)

    def revoke(self, key_or_id: str) -> ApiKey:
        """Revoke a key (by id or by the key); revoking twice keeps the first time."""
        record = self.get(key_or_id)
        if record.revoked:
            return record
        now = time.time()
        self._redis.hsetnx(keys.api_key(record.id), "revoked_at_s", now)
        return self.get(record.id)


class VerifiedKeys:
    """The keys this process saw Redis accept in the last `ttl_s`, by their sha256: what
    a gateway trusts while Redis cannot be reached, and only then. Every verdict Redis
    gives replaces what is remembered, so a key revoked or unknown is forgotten the first
    time Redis answers for it; one revoked while this gateway could not see Redis is
    trusted here for `ttl_s` at most. `ttl_s` 0 remembers nothing."""

    def __init__(
        self,
        ttl_s: float,
        max_keys: int = VERIFIED_KEYS_MAX,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cache: TTLCache[str, ApiKey] | None = (
            TTLCache(maxsize=max_keys, ttl=ttl_s, timer=timer) if ttl_s > 0 else None
        )
        self._lock = threading.Lock()  # request threads share it

    def remember(self, key: str, record: ApiKey | None) -> None:
        """Redis's verdict on `key`: its record, or None (unknown or revoked)."""
        if self._cache is None:
            return
        with self._lock:
            if record is None:
                self._cache.pop(key_hash(key), None)
            else:
                self._cache[key_hash(key)] = record

    def recall(self, key: str) -> ApiKey | None:
        """The record Redis gave for `key` within the last `ttl_s`, if any."""
        if self._cache is None:
            return None
        with self._lock:
            return self._cache.get(key_hash(key))


def _record(id_: str, fields: dict) -> ApiKey:
    text = {decode(k): decode(v) for k, v in fields.items()}
    return ApiKey(
        id=id_,
        tenant=text["tenant"],
        role=Role(text["role"]),
        name=text.get("name", ""),
        created_at_s=float(text["created_at_s"]),
        last_used_s=float(text["last_used_s"]) if "last_used_s" in text else None,
        revoked_at_s=float(text["revoked_at_s"]) if "revoked_at_s" in text else None,
    )
