"""One place maps every error to an HTTP status and the OpenAI error shape."""

from __future__ import annotations

import logging
from http import HTTPStatus

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loramem.errors import (
    Conflict,
    EngineUnavailable,
    Forbidden,
    InvalidRequest,
    LoramemError,
    ModelNotFound,
    NotFound,
    Overloaded,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
)
from server.protocol import ErrorBody, ErrorResponse

log = logging.getLogger("loramem.gateway")

REDIS_RETRY_AFTER_S = 5  # about what a Redis restart or failover takes

_STATUS: list[tuple[type[LoramemError], HTTPStatus, str]] = [
    (Unauthorized, HTTPStatus.UNAUTHORIZED, "authentication_error"),
    (Forbidden, HTTPStatus.FORBIDDEN, "permission_error"),
    (QuotaExceeded, HTTPStatus.FORBIDDEN, "quota_exceeded"),
    (Overloaded, HTTPStatus.SERVICE_UNAVAILABLE, "overloaded"),
    (RateLimited, HTTPStatus.TOO_MANY_REQUESTS, "rate_limit_exceeded"),
    (ModelNotFound, HTTPStatus.NOT_FOUND, "model_not_found"),
    (NotFound, HTTPStatus.NOT_FOUND, "not_found"),
    (Conflict, HTTPStatus.CONFLICT, "conflict"),
    (InvalidRequest, HTTPStatus.BAD_REQUEST, "invalid_request_error"),
    (EngineUnavailable, HTTPStatus.SERVICE_UNAVAILABLE, "engine_unavailable"),
]


def error_body(status: HTTPStatus, message: str, type_: str, param: str | None = None) -> dict:
    body = ErrorResponse(
        error=ErrorBody(message=message, type=type_, param=param, code=status.value)
    )
    return body.model_dump()


def error_response(
    status: HTTPStatus,
    message: str,
    type_: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = error_body(status, message, type_, param)
    return JSONResponse(body, status_code=status.value, headers=headers)


def for_exception(exc: LoramemError) -> JSONResponse:
    for cls, status, type_ in _STATUS:
        if isinstance(exc, cls):
            # RFC 9110: a 401 names the scheme the client should use.
            headers = {"WWW-Authenticate": "Bearer"} if cls is Unauthorized else None
            if isinstance(exc, RateLimited):
                headers = {"Retry-After": str(exc.retry_after_s)}
            return error_response(status, exc.message, type_, exc.param, headers)
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, exc.message, "internal_error")


def install(app: FastAPI) -> None:
    @app.exception_handler(LoramemError)
    async def _domain(_request: Request, exc: LoramemError) -> JSONResponse:
        return for_exception(exc)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    async def _redis_down(_request: Request, exc: Exception) -> JSONResponse:
        # Redis is away (refused, reset or timed out): the write was not made; try later.
        log.warning("redis unavailable: %s", exc)
        return error_response(
            HTTPStatus.SERVICE_UNAVAILABLE,
            "the registry (Redis) is unavailable; retry later",
            "service_unavailable",
            headers={"Retry-After": str(REDIS_RETRY_AFTER_S)},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        location = [str(p) for p in first.get("loc", []) if p != "body"]
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message = "request body is not valid JSON"
        param = ".".join(location) or None
        text = f"{message} ({param})" if param else message
        return error_response(HTTPStatus.BAD_REQUEST, text, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = HTTPStatus(exc.status_code)
        return error_response(status, str(exc.detail), status.phrase.lower().replace(" ", "_"))
