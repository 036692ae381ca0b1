"""OpenAI-compatible surface: chat and text completions, model listing.

The route functions build the HTTP responses and loramem's headers from the `Completion`
the service returns: the engine's JSON, its error body as it came, or its SSE stream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from loramem.names import module_name, public_served_name
from loramem.registry import Registry
from loramem.settings import Settings
from server.completions import Completion, CompletionService, chunk_tokens
from server.deps import (
    Caller,
    CompletionsDep,
    ReaderDep,
    RegistryDep,
    RouterDep,
    SettingsDep,
)
from server.limits import check_completion
from server.protocol import ChatCompletionRequest, CompletionRequest

api = APIRouter(tags=["openai"])


@api.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest,
    caller: ReaderDep,
    service: CompletionsDep,
    settings: SettingsDep,
    registry: RegistryDep,
) -> Response:
    return await _complete("/v1/chat/completions", body, caller, service, settings, registry)


@api.post("/v1/completions")
async def completions(
    body: CompletionRequest,
    caller: ReaderDep,
    service: CompletionsDep,
    settings: SettingsDep,
    registry: RegistryDep,
) -> Response:
    return await _complete("/v1/completions", body, caller, service, settings, registry)


async def _complete(
    path: str,
    body: ChatCompletionRequest | CompletionRequest,
    caller: Caller,
    service: CompletionService,
    settings: Settings,
    registry: Registry,
) -> Response:
    """Bounds, the caller's token budget, then the completion, counted when it ends."""
    check_completion(body, settings)
    check, count = _token_budget(caller, settings, registry, service)
    completion = await service.serve(caller.tenant, path, body, admit=check)
    return _counted(completion, count)


def _token_budget(
    caller: Caller, settings: SettingsDep, registry: RegistryDep, service: CompletionService
) -> tuple[Callable[[], None], Callable[[int], None]]:
    """What refuses (429) when the caller's completion tokens of this window are spent
    (the service runs it in the routing's worker thread, before routing), and what counts
    an answer's tokens into the window once they are known. Both fail open while Redis
    is away (server/redis_outage.py)."""
    limits, subject, outage = registry.rate_limits, caller.rate_subject, service.redis_outage
    limit, window_s = settings.rate_tokens_per_window, settings.rate_window_s

    def check() -> None:
        if limit:
            with service.metrics.stage("budget"):
                outage.optional(
                    "token limit",
                    lambda: limits.check_tokens(subject, limit, window_s, time.time()),
                    None,
                )

    def count(tokens: int) -> None:
        if limit:
            outage.optional(
                "token count",
                lambda: limits.add_tokens(subject, tokens, window_s, time.time()),
                None,
            )

    return check, count


def _counted(completion: Completion, count: Callable[[int], None]) -> Response:
    """A unary answer's tokens are counted after it was sent (a Redis round trip the
    client need not wait for); a stream's as it closes."""
    if completion.stream is not None:
        completion.stream = _counting(completion.stream, count)
    response = completion_response(completion)
    if completion.payload is not None:
        usage = completion.payload.get("usage") or {}
        response.background = BackgroundTask(count, int(usage.get("completion_tokens") or 0))
    return response


async def _counting(
    lines: AsyncIterator[bytes], count: Callable[[int], None]
) -> AsyncIterator[bytes]:
    """Relay a stream, then count its tokens (one chunk with text per token)."""
    tokens = 0
    try:
        async for line in lines:
            if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
                tokens += chunk_tokens(line[6:].decode())
            yield line
    finally:
        count(tokens)  # one Redis round trip as the stream closes


@api.get("/v1/models")
def list_models(caller: ReaderDep, router: RouterDep) -> dict:
    created = int(time.time())
    modules = [module_name(m) for m in router.active_modules(caller.tenant)]
    names = ["auto", router.base_name] + sorted(modules)
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "loramem"} for n in names
        ],
    }


def completion_response(completion: Completion) -> Response:
    headers = completion_headers(completion)
    if completion.status != 200:  # the engine's error, passed through as it came
        return Response(
            completion.content, completion.status, headers, media_type="application/json"
        )
    if completion.stream is not None:
        return StreamingResponse(completion.stream, media_type="text/event-stream", headers=headers)
    return JSONResponse(completion.payload, headers=headers)


def completion_headers(completion: Completion) -> dict[str, str]:
    """Which module answered, in which mode, how it was routed, and on which engine."""
    decision = completion.decision
    headers = {"x-loramem-module": decision.header, "x-loramem-mode": completion.mode}
    # "pending": answered from context while the version holding the fact trains
    headers["x-loramem-outcome"] = decision.outcome
    if decision.score is not None:
        headers["x-loramem-route-score"] = f"{decision.score:.4f}"
    if decision.candidates_header:
        headers["x-loramem-route-candidates"] = decision.candidates_header
    if decision.span_targets:  # a question spanning modules: every part's module
        headers["x-loramem-span"] = ",".join(public_served_name(t) for t in decision.span_targets)
    headers["x-loramem-engine"] = str(completion.engine)
    return headers
