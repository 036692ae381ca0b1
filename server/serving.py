"""Completion serving: route, shape the prompt for the answer mode, forward to the engine."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loramem.errors import EngineUnavailable
from loramem.registry import Registry
from router.router import RouteDecision, Router
from server.metrics import GatewayMetrics
from server.protocol import ChatCompletionRequest, CompletionRequest

RAG_INSTRUCTION = "Answer using these facts when they are relevant:\n"


class CompletionService:
    def __init__(
        self, router: Router, registry: Registry, metrics: GatewayMetrics, http: httpx.AsyncClient
    ) -> None:
        self.router = router
        self.registry = registry
        self.metrics = metrics
        self.http = http
        # Requests in flight per engine model name: a retired version is unloaded only
        # once nothing runs on it.
        self.in_flight: Counter[str] = Counter()

    async def serve(
        self, tenant: str, path: str, request: ChatCompletionRequest | CompletionRequest
    ) -> Response:
        started = time.perf_counter()
        mode = request.loramem.mode
        decision = await run_in_threadpool(self._decide, tenant, request, mode)
        self.metrics.route_seconds.observe(time.perf_counter() - started)
        if decision.score is not None:
            self.metrics.route_score.observe(decision.score)
        body = request.model_dump(exclude={"loramem"}, exclude_none=True)
        body["model"] = decision.target
        if mode != "lora" and decision.candidates:
            await run_in_threadpool(self._add_context, tenant, body, decision)
        label = decision.module or "base"
        self.metrics.requests.labels(label, decision.outcome, mode).inc()
        headers = {"x-loramem-module": decision.header, "x-loramem-mode": mode}
        if decision.score is not None:
            headers["x-loramem-route-score"] = f"{decision.score:.4f}"
        self.in_flight[decision.target] += 1
        release = partial(self._release, decision.target)
        if not request.stream:
            try:
                return await self._unary(path, body, headers, label, started)
            finally:
                release()
        try:
            return await self._stream(path, body, headers, label, started, release)
        except BaseException:
            release()
            raise

    def _release(self, target: str) -> None:
        self.in_flight[target] -= 1

    def _decide(
        self, tenant: str, request: ChatCompletionRequest | CompletionRequest, mode: str
    ) -> RouteDecision:
        decision = self.router.route(tenant, request.model, request.query_text())
        if mode == "rag" and decision.module is not None:
            # RAG answers from the base model with the facts in context, never a module.
            return RouteDecision(
                self.router.base_name, None, "base", decision.score, decision.candidates
            )
        return decision

    def _add_context(self, tenant: str, body: dict[str, Any], decision: RouteDecision) -> None:
        facts = self.registry.facts_by_id(tenant, [h.fact_id for h in decision.candidates])
        context = RAG_INSTRUCTION + "\n".join(f"- {f.text}" for f in facts)
        if "messages" in body:
            body["messages"] = [{"role": "system", "content": context}, *body["messages"]]
        else:
            body["prompt"] = f"{context}\n\n{body['prompt']}"

    async def _unary(
        self, path: str, body: dict[str, Any], headers: dict[str, str], label: str, started: float
    ) -> Response:
        try:
            reply = await self.http.post(path, json=body)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"engine unreachable: {exc}") from exc
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)
        if reply.status_code != 200:
            self.metrics.request_errors.labels(str(reply.status_code)).inc()
            return Response(
                reply.content, reply.status_code, headers, media_type="application/json"
            )
        payload = reply.json()
        usage = payload.get("usage") or {}
        self.metrics.tokens_out.labels(label).inc(usage.get("completion_tokens", 0))
        return JSONResponse(payload, headers=headers)

    async def _stream(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        label: str,
        started: float,
        release: Callable[[], None],
    ) -> Response:
        """Relay the engine's SSE stream; `release` runs once the stream has ended."""
        try:
            upstream = await self.http.send(
                self.http.build_request("POST", path, json=body), stream=True
            )
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"engine unreachable: {exc}") from exc
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            self.metrics.request_errors.labels(str(upstream.status_code)).inc()
            release()
            return Response(content, upstream.status_code, headers, media_type="application/json")

        async def relay() -> AsyncIterator[bytes]:
            first = True
            try:
                async for line in upstream.aiter_lines():
                    if first:
                        self.metrics.ttft.labels(label).observe(time.perf_counter() - started)
                        first = False
                    if line.startswith("data: ") and line != "data: [DONE]":
                        self.metrics.tokens_out.labels(label).inc(_chunk_tokens(line[6:]))
                    yield (line + "\n").encode()
            finally:
                await upstream.aclose()
                release()
                self.metrics.latency.labels(label).observe(time.perf_counter() - started)

        return StreamingResponse(relay(), media_type="text/event-stream", headers=headers)


def _chunk_tokens(data: str) -> int:
    """The engine streams one chunk per generated token; count chunks with text."""
    try:
        chunk = json.loads(data)
    except ValueError:
        return 0
    for choice in chunk.get("choices", []):
        delta = choice.get("delta", {}).get("content") if "delta" in choice else choice.get("text")
        if delta:
            return 1
    return 0
