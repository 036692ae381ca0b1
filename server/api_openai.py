"""OpenAI-compatible surface: chat and text completions, model listing."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from server.deps import CompletionsDep, RouterDep, TenantDep
from server.protocol import ChatCompletionRequest, CompletionRequest

api = APIRouter(tags=["openai"])


@api.post("/v1/chat/completions")
async def chat_completions(
    body: ChatCompletionRequest, tenant: TenantDep, service: CompletionsDep
) -> Response:
    return await service.serve(tenant, "/v1/chat/completions", body)


@api.post("/v1/completions")
async def completions(
    body: CompletionRequest, tenant: TenantDep, service: CompletionsDep
) -> Response:
    return await service.serve(tenant, "/v1/completions", body)


@api.get("/v1/models")
def list_models(tenant: TenantDep, router: RouterDep) -> dict:
    created = int(time.time())
    names = ["auto", router.base_name] + sorted(router.active_modules(tenant))
    return {
        "object": "list",
        "data": [
            {"id": n, "object": "model", "created": created, "owned_by": "loramem"} for n in names
        ],
    }
