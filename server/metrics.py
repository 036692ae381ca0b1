"""Prometheus metrics of the gateway. The module label is bounded by the active modules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from router.embedder import Embedder

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
# The gateway's own steps of a completion take milliseconds; the engine call up to minutes.
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 120)
# A completion's steps in the gateway (loramem_gateway_stage_seconds): "admit" (key and
# request rate), "budget" (the token window), "embed" (the query's embedding), "route"
# (the decision, embedding included), "context" (facts read for rag/hybrid), "engine"
# (the forwarded request: until the reply is read, or its headers when streamed).
STAGE_METRIC_NAME = "loramem_gateway_stage_seconds"
STAGES = ("admit", "budget", "embed", "route", "context", "engine")
# A fact write's steps (POST /facts, /documents, PUT /facts/{id}; loramem_ingest_stage_seconds):
# "wait" (queued for an ingest thread), "embed" (the facts' embeddings, in the niced child
# process), "store" (the Redis transaction that stores them and queues the job).
INGEST_STAGE_METRIC_NAME = "loramem_ingest_stage_seconds"
INGEST_STAGES = ("wait", "embed", "store")


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, max_modules: int = 100) -> None:
        self.registry = registry or CollectorRegistry()
        # The module label is capped: the first `max_modules` modules seen keep their name,
        # later ones count as "other", so a tenant creating thousands of modules cannot
        # blow up Prometheus. Module names are otherwise stable (versions are not labels).
        self.max_modules = max_modules
        self._labelled: set[str] = set()
        r = self.registry
        self.requests = Counter(
            "loramem_requests_total",
            # outcome "merged": model=auto served by a merged adapter of several modules.
            "Completion requests by served module and route outcome.",
            ["module", "outcome", "mode"],
            registry=r,
        )
        self.request_errors = Counter(
            "loramem_request_errors_total",
            "Completion requests that failed, by HTTP status.",
            ["status"],
            registry=r,
        )
        self.latency = Histogram(
            "loramem_request_duration_seconds",
            "Total completion latency by module.",
            ["module"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.ttft = Histogram(
            "loramem_time_to_first_token_seconds",
            "Time to the first streamed chunk by module.",
            ["module"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tokens_out = Counter(
            "loramem_output_tokens_total",
            "Completion tokens produced, by module.",
            ["module"],
            registry=r,
        )
        self.route_seconds = Histogram(
            "loramem_router_duration_seconds",
            "Routing decision time, embedding included.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.merge_builds = Counter(
            "loramem_merge_builds_requested_total",
            "Merged-adapter builds queued because a model=auto request wanted one.",
            registry=r,
        )
        self.stage_seconds = Histogram(
            STAGE_METRIC_NAME,
            "Time a completion spends in each step of the gateway (server/metrics.py STAGES).",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.stages = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        self.ingest_stage_seconds = Histogram(
            INGEST_STAGE_METRIC_NAME,
            "Time a fact write spends in each step of the gateway (server/metrics.py "
            "INGEST_STAGES).",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=r,
        )
        self.ingest_stages = {s: self.ingest_stage_seconds.labels(s) for s in INGEST_STAGES}
        self.route_score = Histogram(
            "loramem_route_score",
            "Cosine similarity of the best fact for model=auto.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=r,
        )
        self.modules_active = Gauge(
            "loramem_modules_active", "Modules with a published version.", registry=r
        )
        self.engine_up = Gauge(
            "loramem_engine_up",
            "1 when the engine answered its health check.",
            ["engine"],
            registry=r,
        )
        self.engine_adapters_loaded = Gauge(
            "loramem_engine_adapters_loaded",
            "Adapters registered in each engine.",
            ["engine"],
            registry=r,
        )
        # Placement (server/placement.py): what each engine holds and how it churns.
        self.engine_adapter_loads = Counter(
            "loramem_engine_adapter_loads_total",
            "Adapters that became resident on an engine (seen by the reconciler), however loaded.",
            ["engine"],
            registry=r,
        )
        self.engine_adapter_evictions = Counter(
            "loramem_engine_adapter_evictions_total",
            "Adapters the reconciler unloaded from an engine: replaced, or placed elsewhere.",
            ["engine"],
            registry=r,
        )
        self.engine_resolver_loads = Gauge(
            "loramem_engine_resolver_loads",
            "Versions the engine's resolver fetched from Redis since it started (its /metrics).",
            ["engine"],
            registry=r,
        )
        self.engine_resolver_load_seconds = Gauge(
            "loramem_engine_resolver_load_seconds",
            "Seconds the engine's resolver spent fetching, in all (divide by the loads).",
            ["engine"],
            registry=r,
        )
        self.engine_push_load_seconds = Histogram(
            "loramem_engine_push_load_seconds",
            "Loads the gateway pushed into an engine (fallback after an engine 404).",
            ["engine"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )

        self.loop_errors = Counter(
            "loramem_loop_errors_total",
            "Errors in the gateway's background loops (they retry and go on), by loop.",
            ["loop"],
            registry=r,
        )
        self.follower_resyncs = Counter(
            "loramem_event_follower_resyncs_total",
            "Routing state rebuilt from the registry: events were trimmed before applied.",
            registry=r,
        )
        self.stream_aborts = Counter(
            "loramem_stream_aborts_total",
            "Streamed answers cut by the engine mid-way (ended with an error event).",
            registry=r,
        )

    def module_label(self, module: str | None) -> str:
        if module is None:
            return "base"
        if module in self._labelled or len(self._labelled) < self.max_modules:
            self._labelled.add(module)
            return module
        return "other"

    def stage(self, name: str) -> AbstractContextManager[None]:
        """Time one step of a completion into loramem_gateway_stage_seconds."""
        return _timed(self.stages[name])

    def ingest_stage(self, name: str) -> AbstractContextManager[None]:
        """Time one step of a fact write into loramem_ingest_stage_seconds."""
        return _timed(self.ingest_stages[name])


@contextmanager
def _timed(histogram: Any) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        histogram.observe(time.perf_counter() - started)


class TimedEmbedder:
    """The router's query embedder, timed as the "embed" stage (ingest has its own)."""

    def __init__(self, embedder: Embedder, metrics: GatewayMetrics) -> None:
        self.embedder = embedder
        self.dim = embedder.dim
        self._observe = metrics.stages["embed"].observe

    def embed(self, texts: list[str]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self.embedder.embed(texts)
        finally:
            self._observe(time.perf_counter() - started)
