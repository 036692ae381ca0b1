"""Operations: Prometheus metrics, liveness and readiness."""

from __future__ import annotations

from http import HTTPStatus

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.deps import AdminDep, MetricsDep, RegistryDep
from server.errors import error_response

api = APIRouter(tags=["ops"])


@api.get("/metrics")
def metrics(_caller: AdminDep, gateway_metrics: MetricsDep) -> Response:
    return Response(generate_latest(gateway_metrics.registry), media_type=CONTENT_TYPE_LATEST)


@api.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@api.get("/readyz")
def readyz(request: Request, registry: RegistryDep) -> Response:
    # Sync on purpose: FastAPI runs it in a thread, so a Redis that does not answer holds
    # that thread for the client's timeout (LORAMEM_REDIS_SOCKET_TIMEOUT_S), never the loop.
    problems = []
    try:
        registry.ping()
    except Exception as exc:  # any failure means not ready; say which
        problems.append(f"redis: {exc}")
    if not request.app.state.pool.any_healthy():
        problems.append("engine: none of the engines answers its health check")
    if problems:
        return error_response(HTTPStatus.SERVICE_UNAVAILABLE, "; ".join(problems), "not_ready")
    return Response('{"status":"ready"}', media_type="application/json")
