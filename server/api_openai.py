"""OpenAI-compatible surface: chat and text completions, model listing.

The route functions build the HTTP responses and loramem's headers from the `Completion`
the service returns: the engine's JSON, its error body as it came, or its SSE stream.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, StreamingResponse

from server.completions import Completion
from server.deps import CompletionsDep, ReaderDep, RouterDep
from server.protocol import ChatCompletionRequest, CompletionRequest

api = APIRouter(tags=["openai"])


@api.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, caller: ReaderDep, service: CompletionsDep
) -> Response:
    return completion_response(await service.serve(caller.tenant, "/v1/chat/completions", body))


@api.post("/v1/completions")
async def completions(
    body: CompletionRequest, caller: ReaderDep, service: CompletionsDep
) -> Response:
    return completion_response(await service.serve(caller.tenant, "/v1/completions", body))


@api.get("/v1/models")
def list_models(caller: ReaderDep, router: RouterDep) -> dict:
    created = int(time.time())
    names = ["auto", router.base_name] + sorted(router.active_modules(caller.tenant))
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
    if decision.score is not None:
        headers["x-loramem-route-score"] = f"{decision.score:.4f}"
    if decision.candidates_header:
        headers["x-loramem-route-candidates"] = decision.candidates_header
    headers["x-loramem-engine"] = str(completion.engine)
    return headers
