"""Completion serving: route, shape the prompt for the answer mode, forward to an engine."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from loramem.errors import EngineUnavailable, LoramemError
from loramem.registry import Registry
from router.router import RouteDecision, Router
from server.engines import EnginePool
from server.metrics import GatewayMetrics
from server.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("loramem.gateway")

RAG_INSTRUCTION = "Answer using these facts when they are relevant:\n"

# Loads one module version into one engine (engine URL, served name); True when loaded.
AdapterLoader = Callable[[str, str], Awaitable[bool]]


class CompletionService:
    def __init__(
        self,
        router: Router,
        registry: Registry,
        metrics: GatewayMetrics,
        http: httpx.AsyncClient,
        pool: EnginePool,
        load_adapter: AdapterLoader,
    ) -> None:
        self.router = router
        self.registry = registry
        self.metrics = metrics
        self.http = http
        self.pool = pool
        self.load_adapter = load_adapter
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
        label = self.metrics.module_label(decision.module)
        self.metrics.requests.labels(label, decision.outcome, mode).inc()
        headers = {"x-loramem-module": decision.header, "x-loramem-mode": mode}
        if decision.score is not None:
            headers["x-loramem-route-score"] = f"{decision.score:.4f}"
        if decision.candidates_header:
            headers["x-loramem-route-candidates"] = decision.candidates_header
        self.in_flight[decision.target] += 1
        release = partial(self._release, decision.target)
        try:
            engine, reply = await self._send(decision, path, body, stream=request.stream)
        except BaseException:
            release()
            raise
        headers["x-loramem-engine"] = str(self.pool.urls.index(engine))
        if not request.stream:
            release()
            return self._unary(reply, headers, label, started)
        return await self._stream(reply, headers, label, started, release)

    def _release(self, target: str) -> None:
        self.in_flight[target] -= 1

    def _decide(
        self, tenant: str, request: ChatCompletionRequest | CompletionRequest, mode: str
    ) -> RouteDecision:
        # LORAMEM_ROUTER_MERGE asks for every request; rag never serves a module anyway.
        merge = (request.loramem.merge or self.router.merge_default) and mode != "rag"
        decision = self.router.route(tenant, request.model, request.query_text(), merge=merge)
        if decision.merge_wanted:
            self._request_merge(tenant, decision.merge_wanted)
        if mode == "rag" and decision.module is not None:
            # RAG answers from the base model with the facts in context, never a module.
            return RouteDecision(
                self.router.base_name,
                None,
                "base",
                decision.score,
                decision.candidates,
                decision.modules,
            )
        return decision

    def _request_merge(self, tenant: str, modules: list[str]) -> None:
        """Queue the merge this request wanted (deduplicated in Redis); the best module
        serves this request either way, and a later one gets the merge once published."""
        try:
            _job, queued = self.registry.merges.request(
                tenant, modules, self.router.merge_combination, None
            )
        except LoramemError as exc:  # a source changed under us: the next request retries
            log.warning("merge of %s not queued: %s", modules, exc.message)
            return
        if queued:
            self.metrics.merge_builds.inc()

    def _add_context(self, tenant: str, body: dict[str, Any], decision: RouteDecision) -> None:
        facts = self.registry.facts.by_id(tenant, [h.fact_id for h in decision.candidates])
        context = RAG_INSTRUCTION + "\n".join(f"- {f.text}" for f in facts)
        if "messages" in body:
            body["messages"] = [{"role": "system", "content": context}, *body["messages"]]
        else:
            body["prompt"] = f"{context}\n\n{body['prompt']}"

    async def _send(
        self, decision: RouteDecision, path: str, body: dict[str, Any], stream: bool
    ) -> tuple[str, httpx.Response]:
        """Send to the preferred engine; fail over on a refused connection, and load a
        module version the engine lacks (it restarted, or joined late) before retrying."""
        for engine in self.pool.candidates(decision.target):
            request = self.http.build_request("POST", engine + path, json=body)
            self.pool.in_flight[engine] += 1
            try:
                reply = await self.http.send(request, stream=stream)
                if reply.status_code == 404 and decision.module is not None:
                    await reply.aclose()
                    if await self.load_adapter(engine, decision.target):
                        reply = await self.http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                self.pool.mark(engine, healthy=False)  # nothing was generated: try another
                continue
            except httpx.HTTPError as exc:
                raise EngineUnavailable(f"engine {engine} failed: {exc}") from exc
            finally:
                self.pool.in_flight[engine] -= 1
            return engine, reply
        raise EngineUnavailable("no engine is reachable")

    def _unary(
        self, reply: httpx.Response, headers: dict[str, str], label: str, started: float
    ) -> Response:
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
        upstream: httpx.Response,
        headers: dict[str, str],
        label: str,
        started: float,
        release: Callable[[], None],
    ) -> Response:
        """Relay the engine's SSE stream; `release` runs once the stream has ended."""
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            release()
            self.metrics.request_errors.labels(str(upstream.status_code)).inc()
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
