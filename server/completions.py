"""Completion serving: route, shape the request for its answer mode, forward, measure.

Returns data (`Completion`): the route decision, the engine, and the engine's answer as
a JSON payload, an error body, or a stream of SSE lines. The route functions in
server/api_openai.py turn it into HTTP responses and headers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from loramem.errors import LoramemError
from loramem.names import module_name
from loramem.registry import Registry
from loramem.registry.facts import Fact
from router import answer
from router.pending import PendingFacts
from router.router import RouteDecision, Router
from server import span
from server.errors import error_body
from server.explain import explain, on_first_chunk
from server.forwarding import EngineForwarder, Upstream
from server.hits import HitCounter
from server.metrics import GatewayMetrics
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.redis_outage import RedisOutage

log = logging.getLogger("loramem.gateway")


@dataclass
class Completion:
    decision: RouteDecision
    mode: str
    engine: int  # the answering engine's index in the pool
    status: int  # the engine's HTTP status
    payload: dict[str, Any] | None = None  # a unary answer (status 200)
    content: bytes = b""  # the engine's error body (status other than 200)
    stream: AsyncIterator[bytes] | None = None  # SSE lines of a streamed answer (status 200)


class CompletionService:
    def __init__(
        self,
        router: Router,
        registry: Registry,
        metrics: GatewayMetrics,
        forwarder: EngineForwarder,
        hits: HitCounter,
        pending: PendingFacts | None = None,
        interim_mode: str = "off",
        span_method: str = "off",
        span_question: str = "trained",
        answer_mode: str = "lora",
        document_answer_mode: str | None = None,
        trained_questions: int = 10,
        context_named_only: bool = True,
    ) -> None:
        self.router = router
        self.answer_mode = answer_mode  # a request's mode when it names none
        self.document_answer_mode = document_answer_mode  # ... and it routes to a document
        self.trained_questions = trained_questions  # phrasings a job trains per fact
        self.context_named_only = context_named_only  # context: facts whose subject is named
        self.span_method = span_method  # questions that span modules (server/span.py)
        self.span_question = span_question  # what each composed part is asked
        self.pending = pending  # changes no published version holds yet (read your writes)
        self.interim_mode = interim_mode
        self.registry = registry
        self.metrics = metrics
        self.forwarder = forwarder
        self.hits = hits  # per tenant, for the console's chart
        self.redis_outage = RedisOutage()  # what chat skips while Redis is away

    async def serve(
        self,
        tenant: str,
        path: str,
        request: ChatCompletionRequest | CompletionRequest,
        admit: Callable[[], None] | None = None,
    ) -> Completion:
        """`admit` (blocking: the caller's token window) runs first, in the routing's
        worker thread: one hand-off to a thread per request, not two."""
        started = time.perf_counter()
        decision, mode = await run_in_threadpool(self._admit_and_decide, admit, tenant, request)
        if decision.score is not None:
            self.metrics.route_score.observe(decision.score)
        body = request.model_dump(exclude={"loramem"}, exclude_none=True)
        body["model"] = decision.target
        spanning = request.loramem.span or self.span_method
        compose = spanning in span.COMPOSING and bool(decision.span) and span.composable(body)
        fact_ids: list[str] = []  # composed: each part's module asked its own question
        if decision.span and not compose and mode == "lora":  # "context", or not composable
            fact_ids = span.context_fact_ids(decision)
        elif not compose:
            fact_ids = answer.context_fact_ids(decision, mode, self._context_threshold(request))
        if fact_ids:
            query = request.query_text()
            await run_in_threadpool(self._add_context, tenant, body, fact_ids, query)
        label = self.metrics.module_label(decision.module)
        self.metrics.requests.labels(label, decision.outcome, mode).inc()
        self.hits.record(tenant, module_name(decision.module) if decision.module else None)
        if compose:
            query = request.query_text()
            hybrid = spanning == "compose-hybrid"
            facts = await run_in_threadpool(self._span_facts, tenant, decision) if hybrid else None
            trained = (request.loramem.span_question or self.span_question) == "trained"
            bodies = span.part_bodies(decision, body, query, trained, facts)
            completion = await self._composed(
                decision, mode, path, bodies, label, started, request.stream
            )
        else:
            completion = await self._forwarded(decision, mode, path, body, label, started)
        if request.loramem.explain and completion.status == 200:
            await run_in_threadpool(self._explain, tenant, completion)
        return completion

    async def _forwarded(
        self,
        decision: RouteDecision,
        mode: str,
        path: str,
        body: dict[str, Any],
        label: str,
        started: float,
    ) -> Completion:
        with self.metrics.stage("engine"):
            upstream = await self.forwarder.forward(
                decision.target, decision.module is not None, path, body, stream=body["stream"]
            )
        engine = self.forwarder.pool.urls.index(upstream.engine)
        if not body["stream"]:
            upstream.release()
            return self._unary(decision, mode, engine, upstream.reply, label, started)
        return await self._stream(decision, mode, engine, upstream, label, started)

    async def _composed(
        self,
        decision: RouteDecision,
        mode: str,
        path: str,
        bodies: list[dict[str, Any]],
        label: str,
        started: float,
        stream: bool,
    ) -> Completion:
        """A spanning question, each part asked of its module and the answers joined."""
        with self.metrics.stage("engine"):
            joined = await span.compose(self.forwarder, decision.span_targets, path, bodies)
        engine = self.forwarder.pool.urls.index(joined.engine)
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)
        if joined.payload is None:
            self.metrics.request_errors.labels(str(joined.status)).inc()
            content = _public_content(decision, joined.content)
            return Completion(decision, mode, engine, joined.status, content=content)
        payload = joined.payload
        payload["model"] = decision.public_target
        self.metrics.tokens_out.labels(label).inc(payload["usage"].get("completion_tokens", 0))
        if stream:
            return Completion(decision, mode, engine, 200, stream=span.as_stream(payload))
        return Completion(decision, mode, engine, 200, payload=payload)

    def _explain(self, tenant: str, completion: Completion) -> None:
        """Add the routing decision to the answer (server/explain.py)."""

        def read(ids: list[str]) -> list[Fact]:
            return self.redis_outage.optional(
                "facts explained", lambda: self.registry.facts.by_id(tenant, ids), []
            )

        told = explain(completion.decision, completion.mode, self.router.threshold, read)
        if completion.payload is not None:
            completion.payload["loramem"] = told.model_dump()
        elif completion.stream is not None:
            completion.stream = on_first_chunk(completion.stream, told)

    def _admit_and_decide(
        self,
        admit: Callable[[], None] | None,
        tenant: str,
        request: ChatCompletionRequest | CompletionRequest,
    ) -> answer.Routed:
        if admit is not None:
            admit()
        started = time.perf_counter()
        routed = self._decide(tenant, request)
        routed_s = time.perf_counter() - started
        self.metrics.route_seconds.observe(routed_s)
        self.metrics.stages["route"].observe(routed_s)
        return routed

    def _decide(
        self, tenant: str, request: ChatCompletionRequest | CompletionRequest
    ) -> answer.Routed:
        decision, mode = answer.route(
            self.router,
            tenant,
            request.model,
            request.query_text(),
            self._modes(tenant, request),
            request.loramem.merge,
            self.pending,
            request.loramem.interim or self.interim_mode,
            self._context_threshold(request),
        )
        spanning = request.loramem.span or self.span_method
        if spanning != "off" and mode in span.SPANNING_MODES and request.model == "auto":
            decision = self.router.with_span(
                tenant, decision, request.query_text(), lambda ids: self._texts(tenant, ids)
            )
        if decision.merge_wanted:
            wanted = decision.merge_wanted
            self.redis_outage.optional(
                "merge request", lambda: self._request_merge(tenant, wanted), None
            )
        return answer.Routed(decision, mode)

    def _modes(
        self, tenant: str, request: ChatCompletionRequest | CompletionRequest
    ) -> answer.Modes:
        """The request's mode, else the defaults, which look at the fact it routes to
        (its text from the router's cache): a document's sentence, and in "auto" whether
        the question is one the module trained."""
        return answer.Modes(
            request.loramem.mode,
            self.answer_mode,
            self.document_answer_mode,
            lambda fact_id: self._texts(tenant, [fact_id]).get(fact_id),
            self.router.subject_max_words,
            request.query_text(),
            self.trained_questions,
        )

    def _context_threshold(self, request: ChatCompletionRequest | CompletionRequest) -> float:
        asked = request.loramem.context_threshold
        return self.router.context_threshold if asked is None else asked

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

    def _span_facts(self, tenant: str, decision: RouteDecision) -> dict[str, str]:
        """The texts of the spanning parts' facts (the span check just looked them up)."""
        return self._texts(tenant, [part.fact_id for part in decision.span])

    def _texts(self, tenant: str, ids: list[str]) -> dict[str, str]:
        """Indexed facts' texts: the router's cache (the texts their versions were
        trained on), the rest from Redis while it answers. While Redis is away, a fact
        outside the cache has no text: the span check leaves it out, and a question it
        would have spanned is answered by the chosen module alone."""
        found = self.router.fact_texts(tenant, ids, read=False)
        missing = [i for i in ids if i not in found]
        if missing:
            nothing: dict[str, str] = {}
            found |= self.redis_outage.optional(
                "fact texts", lambda: self.router.fact_texts(tenant, missing), nothing
            )
        return found

    def _add_context(
        self, tenant: str, body: dict[str, Any], fact_ids: list[str], query: str
    ) -> None:
        with self.metrics.stage("context"):
            texts: list[str] = self.redis_outage.optional(
                "facts in context",
                lambda: [f.text for f in self.registry.facts.by_id(tenant, fact_ids)],
                [],
            )
        if self.context_named_only:
            # Another subject's fact is no evidence, only a value to mix up: PhoneBook's
            # look-alike facts put 2.7 others above the threshold beside a paraphrase's own.
            texts = [t for t in texts if self.router.names_subject(tenant, query, t)]
        if texts:
            answer.add_context(body, texts)

    def _unary(
        self,
        decision: RouteDecision,
        mode: str,
        engine: int,
        reply: httpx.Response,
        label: str,
        started: float,
    ) -> Completion:
        self.metrics.latency.labels(label).observe(time.perf_counter() - started)
        if reply.status_code != 200:
            self.metrics.request_errors.labels(str(reply.status_code)).inc()
            content = _public_content(decision, reply.content)
            return Completion(decision, mode, engine, reply.status_code, content=content)
        payload = reply.json()
        payload["model"] = decision.public_target  # the engine's name holds the module id
        usage = payload.get("usage") or {}
        self.metrics.tokens_out.labels(label).inc(usage.get("completion_tokens", 0))
        return Completion(decision, mode, engine, 200, payload=payload)

    async def _stream(
        self,
        decision: RouteDecision,
        mode: str,
        engine: int,
        upstream: Upstream,
        label: str,
        started: float,
    ) -> Completion:
        """The engine's SSE stream, relayed; the upstream is released once it has ended."""
        reply = upstream.reply
        if reply.status_code != 200:
            content = _public_content(decision, await reply.aread())
            await reply.aclose()
            upstream.release()
            self.metrics.request_errors.labels(str(reply.status_code)).inc()
            return Completion(decision, mode, engine, reply.status_code, content=content)
        lines = self._relay(reply, decision, label, started, upstream.release)
        return Completion(decision, mode, engine, 200, stream=lines)

    async def _relay(
        self,
        reply: httpx.Response,
        decision: RouteDecision,
        label: str,
        started: float,
        release: Callable[[], None],
    ) -> AsyncIterator[bytes]:
        first = True
        # Every chunk names the engine's model, which holds the module id: show the name.
        engine_model = f'"model":{json.dumps(decision.target)}'
        shown_model = f'"model":{json.dumps(decision.public_target)}'
        try:
            async for line in reply.aiter_lines():
                if first:
                    self.metrics.ttft.labels(label).observe(time.perf_counter() - started)
                    first = False
                if line.startswith("data: ") and line != "data: [DONE]":
                    self.metrics.tokens_out.labels(label).inc(chunk_tokens(line[6:]))
                    line = line.replace(engine_model, shown_model, 1)
                yield (line + "\n").encode()
        except httpx.TransportError as exc:  # the engine died or hung mid-answer
            log.warning("stream from the engine cut: %s", exc)
            self.metrics.stream_aborts.inc()
            yield stream_error_event(f"the engine stopped mid-answer: {type(exc).__name__}")
        finally:
            await reply.aclose()
            release()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)


def _public_content(decision: RouteDecision, content: bytes) -> bytes:
    """An engine's error body with the engine-side model name (it holds the module id)
    replaced by the name the tenant knows."""
    return content.replace(decision.target.encode(), decision.public_target.encode())


def stream_error_event(message: str) -> bytes:
    """The OpenAI stream's way to end with an error: an error event, then [DONE]."""
    body = error_body(HTTPStatus.BAD_GATEWAY, message, "engine_error")
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()


def chunk_tokens(data: str) -> int:
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
