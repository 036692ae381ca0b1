"""Dependencies handed to route functions. Everything is built once, in app.lifespan.

The accessors are `async def`: FastAPI runs a plain `def` dependency in a worker thread,
a hand-off per dependency per request for what is an attribute read."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from loramem.errors import Forbidden, InvalidRequest, Unauthorized
from loramem.registry import Registry
from loramem.registry.apikeys import TENANT, ApiKey, Role, VerifiedKeys, bearer_key
from loramem.settings import Settings
from router.router import Router
from server.completions import CompletionService
from server.hits import HitCounter
from server.limits import IngestPool
from server.metrics import GatewayMetrics
from server.reconcile import EventFollower
from server.redis_outage import REDIS_DOWN, RedisOutage


async def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


async def _router(request: Request) -> Router:
    return request.app.state.router  # type: ignore[no-any-return]


async def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


async def _completions(request: Request) -> CompletionService:
    return request.app.state.completions  # type: ignore[no-any-return]


async def _ingest(request: Request) -> IngestPool:
    return request.app.state.ingest  # type: ignore[no-any-return]


async def _verified_keys(request: Request) -> VerifiedKeys:
    return request.app.state.verified_keys  # type: ignore[no-any-return]


async def _hits(request: Request) -> HitCounter:
    return request.app.state.hits  # type: ignore[no-any-return]


async def _follower(request: Request) -> EventFollower:
    return request.app.state.follower  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
RouterDep = Annotated[Router, Depends(_router)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
CompletionsDep = Annotated[CompletionService, Depends(_completions)]
IngestDep = Annotated[IngestPool, Depends(_ingest)]
VerifiedKeysDep = Annotated[VerifiedKeys, Depends(_verified_keys)]
HitsDep = Annotated[HitCounter, Depends(_hits)]
FollowerDep = Annotated[EventFollower, Depends(_follower)]


@dataclass(frozen=True)
class Caller:
    """Who is asking: the tenant everything is scoped to, the role, and the key (None
    when auth is off)."""

    tenant: str
    role: Role
    key_id: str | None

    @property
    def rate_subject(self) -> str:
        """Whose rate windows count this request: the key's, or the tenant's with auth off."""
        return self.key_id or f"tenant={self.tenant}"


def _caller(
    settings: SettingsDep,
    registry: RegistryDep,
    completions: CompletionsDep,
    verified: VerifiedKeysDep,
    authorization: Annotated[str | None, Header()] = None,
    x_loramem_tenant: Annotated[str | None, Header()] = None,
) -> Caller:
    """Auth on: the key decides tenant and role, and x-loramem-tenant is ignored. Auth
    off (loopback only, server/app.py): the header names the tenant, everything is
    allowed. Runs once per request; the key is read from Redis each time, so a revoked
    key fails on its next request at every gateway. Counts the request in the caller's
    rate window (shared by every gateway through Redis)."""
    with completions.metrics.stage("admit"):
        return _admit(settings, registry, completions, verified, authorization, x_loramem_tenant)


def _admit(
    settings: Settings,
    registry: Registry,
    completions: CompletionService,
    verified: VerifiedKeys,
    authorization: str | None,
    x_loramem_tenant: str | None,
) -> Caller:
    if settings.auth == "off":
        caller = Caller(_header_tenant(x_loramem_tenant), Role.admin, None)
    else:
        key = bearer_key(authorization)
        record = _authenticate(key, registry, verified, completions.redis_outage) if key else None
        if record is None:
            reason = "is unknown or revoked" if key else "is missing: send Authorization: Bearer"
            raise Unauthorized(f"API key {reason}")
        caller = Caller(record.tenant, record.role, record.id)
    # Fails open while Redis is away (logged): chat goes on uncounted, writes get a 503.
    completions.redis_outage.optional(
        "rate limit",
        lambda: registry.rate_limits.hit(
            caller.rate_subject,
            settings.rate_requests_per_window,
            settings.rate_window_s,
            time.time(),
        ),
        None,
    )
    return caller


def _authenticate(
    key: str, registry: Registry, verified: VerifiedKeys, outage: RedisOutage
) -> ApiKey | None:
    """Redis's verdict on the key whenever Redis answers; while it cannot be reached, the
    record of a key it accepted lately (else the Redis error stands: 503)."""
    try:
        record = registry.api_keys.authenticate(key)
    except REDIS_DOWN as exc:
        record = verified.recall(key)
        if record is None:
            raise
        outage.note("rate limit", exc)  # the rest of this request need not wait on it too
        return record
    verified.remember(key, record)
    return record


def _header_tenant(header: str | None) -> str:
    tenant = header or "default"
    if not TENANT.match(tenant):
        raise InvalidRequest("x-loramem-tenant must be 1-64 letters, digits, '_', '.' or '-'")
    return tenant


def _requires(role: Role) -> Callable[[Caller], Awaitable[Caller]]:
    async def check(caller: Annotated[Caller, Depends(_caller)]) -> Caller:
        if not caller.role.allows(role):
            raise Forbidden(f"this needs a key with the role {role.value} (yours: {caller.role})")
        return caller

    return check


# A route asks for the least role it needs; the Caller it gets carries the tenant.
ReaderDep = Annotated[Caller, Depends(_requires(Role.reader))]
WriterDep = Annotated[Caller, Depends(_requires(Role.writer))]
AdminDep = Annotated[Caller, Depends(_requires(Role.admin))]
