"""Dependencies handed to route functions. Everything is built once, in app.lifespan."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from loramem.errors import InvalidRequest
from loramem.registry import Registry
from loramem.settings import Settings
from router.router import Router
from server.completions import CompletionService
from server.metrics import GatewayMetrics

_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _registry(request: Request) -> Registry:
    return request.app.state.registry  # type: ignore[no-any-return]


def _router(request: Request) -> Router:
    return request.app.state.router  # type: ignore[no-any-return]


def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def _completions(request: Request) -> CompletionService:
    return request.app.state.completions  # type: ignore[no-any-return]


def _tenant(x_loramem_tenant: Annotated[str | None, Header()] = None) -> str:
    """Until API keys exist, the tenant comes from this header."""
    tenant = x_loramem_tenant or "default"
    if not _TENANT.match(tenant):
        raise InvalidRequest("x-loramem-tenant must be 1-64 letters, digits, '_', '.' or '-'")
    return tenant


SettingsDep = Annotated[Settings, Depends(_settings)]
RegistryDep = Annotated[Registry, Depends(_registry)]
RouterDep = Annotated[Router, Depends(_router)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
CompletionsDep = Annotated[CompletionService, Depends(_completions)]
TenantDep = Annotated[str, Depends(_tenant)]
