"""The gateway's own limits: body size while it is read, requests in flight, the shape of
a completion request, and the bounded pool that embeds facts at ingest.

The two middlewares are pure ASGI, so they act before FastAPI reads or parses anything.
Quotas and rate limits kept in Redis live in loramem/registry/limits.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http import HTTPStatus
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loramem.errors import InvalidRequest, Overloaded
from loramem.settings import Settings
from router.embedder import Embedder
from server.metrics import GatewayMetrics
from server.protocol import ChatCompletionRequest, CompletionRequest, ErrorBody, ErrorResponse

T = TypeVar("T")
COMPLETION_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


async def send_error(
    send: Send, status: HTTPStatus, message: str, type_: str, headers: dict[str, str]
) -> None:
    """An OpenAI-shaped error, written straight to ASGI (server/errors.py's shape)."""
    error = ErrorBody(message=message, type=type_, param=None, code=status.value)
    body = json.dumps(ErrorResponse(error=error).model_dump()).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status.value, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class BodyLimit:
    """413 for a body over `max_bytes`: at once from Content-Length, or as soon as the
    bytes read pass it; the rest is never read, and nothing the app answered is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        over = False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                over = True
                raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            if not over:  # once over, the app's own answer (a 400 or 500) is dropped
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            pass
        if over:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        message = f"request body is over {self.max_bytes} bytes (LORAMEM_MAX_BODY_BYTES)"
        await send_error(send, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message, "too_large", {})


class InFlightLimit:
    """At most `limit` completion requests at once in this gateway; past it a fast 429
    with Retry-After, never a wait. A streamed answer counts until its stream ends."""

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0  # the event loop's thread only: no lock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in COMPLETION_PATHS:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            message = (
                f"{self.limit} completions are in flight here (LORAMEM_COMPLETIONS_MAX_IN_FLIGHT)"
            )
            headers = {"Retry-After": str(self.retry_after_s)}
            await send_error(send, HTTPStatus.TOO_MANY_REQUESTS, message, "overloaded", headers)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def check_completion(
    request: ChatCompletionRequest | CompletionRequest, settings: Settings
) -> None:
    """Bounds on what the gateway passes through to the engine unread (extra fields)."""
    if isinstance(request, ChatCompletionRequest):
        if len(request.messages) > settings.max_messages:
            raise InvalidRequest(f"at most {settings.max_messages} messages", param="messages")
        chars = sum(_chars(m.content) for m in request.messages)
        param = "messages"
    else:
        prompts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        chars, param = sum(len(p) for p in prompts), "prompt"
    if chars > settings.max_prompt_chars:
        raise InvalidRequest(
            f"{param} hold {chars} characters, over {settings.max_prompt_chars}", param=param
        )
    extra: dict[str, Any] = request.model_extra or {}
    for name in ("max_tokens", "max_completion_tokens"):
        _check_count(extra.get(name), name, settings.max_completion_tokens)
    _check_count(extra.get("n"), "n", settings.max_choices)


def _chars(content: Any) -> int:
    """A message's text; content parts and other shapes count as their JSON."""
    return len(content) if isinstance(content, str) else len(json.dumps(content))


def _check_count(value: object, name: str, limit: int) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise InvalidRequest(f"{name} must be a whole number from 1 to {limit}", param=name)


class IngestPool:
    """Fact embedding (and storing) at ingest, in threads of its own: a flood of facts
    does not take the threads that route chat. At most `max_queued` requests wait or run;
    past that a 503 with Retry-After. `embedder` embeds the facts (in the gateway, a
    ProcessEmbedder: a child process of low priority, so not the engine's cores either).
    With `metrics`, each request's wait for a thread, and the steps the handler names
    (`timed`), go into loramem_ingest_stage_seconds."""

    def __init__(
        self,
        threads: int,
        max_queued: int,
        embedder: Embedder,
        retry_after_s: int = 1,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="ingest")
        self.max_queued = max_queued
        self.embedder = embedder
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.queued = 0  # the event loop's thread only: no lock

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        if self.queued >= self.max_queued:
            raise Overloaded(
                f"{self.max_queued} fact requests are queued here (LORAMEM_INGEST_MAX_QUEUED)",
                self.retry_after_s,
            )
        self.queued += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, partial(self._after_wait, time.perf_counter(), fn, *args)
            )
        finally:
            self.queued -= 1

    def _after_wait(self, queued_at: float, fn: Callable[..., T], *args: Any) -> T:
        if self.metrics is not None:
            self.metrics.ingest_stages["wait"].observe(time.perf_counter() - queued_at)
        return fn(*args)

    def timed(self, stage: str) -> contextlib.AbstractContextManager[None]:
        """A step of a fact write ("embed", "store"), timed when the pool has metrics."""
        if self.metrics is None:
            return contextlib.nullcontext()
        return self.metrics.ingest_stage(stage)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
