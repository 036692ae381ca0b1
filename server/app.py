"""The gateway's composition root: build every dependency once, in the lifespan."""

from __future__ import annotations

import gc
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from loramem.adapter_store import AdapterStore
from loramem.engine import EngineClient, engine_headers, engine_http_limits
from loramem.registry import Registry
from loramem.registry.apikeys import VerifiedKeys
from loramem.settings import Settings, get_settings
from router.embedder import Embedder, ProcessEmbedder
from router.embedder import query_embedder as query_embedder_for
from router.pending import PendingFacts
from router.router import Router
from server import api_admin, api_console, api_knowledge, api_merges, api_openai, api_ops, errors
from server.completions import CompletionService
from server.engines import EnginePool
from server.forwarding import EngineForwarder
from server.hits import HitCounter
from server.limits import BodyLimit, InFlightLimit, IngestPool
from server.metrics import GatewayMetrics, TimedEmbedder
from server.placement import DemandMeter, ReplicaPolicy
from server.reconcile import EventFollower, Reconciler

log = logging.getLogger("loramem.gateway")
GATEWAY_KEEP_ALIVE_S = 75  # idle seconds before the gateway closes a client connection


def freeze_collector() -> None:
    """Leave what the process has made so far out of Python's full garbage collections.

    A gateway's start makes about 150k objects that the collector tracks (its libraries';
    the router's maps grow with the facts), all living as long as the process; a full
    collection walked them in 65 ms (290 ms while torch was imported), a stall of the
    event loop and of every request in flight (docs/RESULTS.md, "The garbage collector's
    pause"). Collect first, so that no garbage is frozen."""
    gc.collect()
    gc.freeze()


def create_app(
    settings: Settings | None = None,
    embedder: Embedder | None = None,
    freeze_after_start: bool = False,
) -> FastAPI:
    """The gateway. `freeze_after_start`: the gateway's own process (`main`) freezes what
    its start made (freeze_collector); a test process that builds many apps does not."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry.from_settings(settings)
        metrics = GatewayMetrics(max_modules=settings.metrics_max_modules)
        query_embedder = embedder or query_embedder_for(settings)
        router = Router.from_settings(registry, TimedEmbedder(query_embedder, metrics), settings)
        # Every forwarded request carries the engines' key (forwarding.py builds on it).
        http = httpx.AsyncClient(
            timeout=settings.engine_request_timeout_s,
            headers=engine_headers(settings.engine_api_key),
            limits=engine_http_limits(),
        )
        pool = EnginePool(
            settings.engines,
            settings.engine_spill_in_flight,
            ReplicaPolicy(settings.placement_rate_per_replica, settings.placement_max_replicas),
            DemandMeter(settings.placement_rate_half_life_s),
            slots=settings.engine_slots_placed,
        )
        stop = threading.Event()
        reconciler = Reconciler(
            registry,
            router,
            pool,
            {url: EngineClient(url, api_key=settings.engine_api_key) for url in pool.urls},
            AdapterStore(settings.adapters_path, registry),
            metrics,
            stop,
            retire_grace_s=settings.retire_grace_s,
            preload=not settings.engine_resolver,  # with it, engines load on first request
            max_interval_s=settings.reconcile_max_interval_s,
        )

        async def load_adapter(engine: str, name: str) -> bool:
            return await run_in_threadpool(reconciler.load_into, engine, name)

        forwarder = EngineForwarder(http, pool, load_adapter)
        pending = PendingFacts(registry, router.embedder.dim)  # exact: it holds few facts
        hits = HitCounter(settings.hits_window_s, settings.hits_bucket_s)
        completions = CompletionService(
            router,
            registry,
            metrics,
            forwarder,
            hits,
            pending,
            settings.interim_mode,
            settings.router_span,
            settings.router_span_question,
            settings.answer_mode,
            settings.document_answer_mode,
            settings.training.questions_per_fact,
            settings.router_context_named_only,
        )
        reconciler.in_flight = forwarder.in_flight
        follower = EventFollower(
            registry,
            router,
            stop,
            metrics,
            snapshot_interval_s=settings.router_snapshot_interval_s,
            pending=pending,
            on_change=reconciler.wake,  # a publish or retire: the engines' residency moves
        )
        follower.start()  # reads the event cursor first, then loads: no event is missed
        reconciler.start()
        app.state.pool = pool
        app.state.settings = settings
        app.state.registry = registry
        app.state.router = router
        app.state.metrics = metrics
        app.state.http = http
        app.state.completions = completions
        app.state.follower = follower
        # After the query embedder: with "onnx" it has exported the graph the child loads.
        ingest_embedder = (
            ProcessEmbedder.from_settings(settings)
            if settings.ingest_embed_process and embedder is None
            else query_embedder
        )
        if isinstance(ingest_embedder, ProcessEmbedder):
            log.info("facts are embedded by %s in a child process", ingest_embedder.kind)
        app.state.ingest = IngestPool(
            settings.ingest_threads, settings.ingest_max_queued, ingest_embedder, metrics=metrics
        )
        app.state.verified_keys = VerifiedKeys(settings.auth_outage_cache_s)
        app.state.hits = hits
        if freeze_after_start:
            freeze_collector()
        try:
            yield
        finally:
            stop.set()
            reconciler.wake()  # out of its pause now
            app.state.ingest.close()
            if isinstance(ingest_embedder, ProcessEmbedder):  # waits for its child to exit
                await run_in_threadpool(ingest_embedder.close)
            try:  # the next start loads this instead of rebuilding from Redis
                await run_in_threadpool(router.save_snapshots)
            except Exception:
                log.exception("router snapshot at shutdown failed")
            await http.aclose()

    app = FastAPI(title="loramem gateway", lifespan=lifespan)
    errors.install(app)
    # Pure ASGI, outermost last: the body limit and the in-flight bound act before parsing.
    app.add_middleware(InFlightLimit, limit=settings.completions_max_in_flight)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.include_router(api_knowledge.api)
    app.include_router(api_merges.api)
    app.include_router(api_openai.api)
    app.include_router(api_ops.api)
    app.include_router(api_admin.api)
    api_console.install(app)
    return app


def is_loopback(host: str) -> bool:
    """Only this machine can reach the host. A name other than localhost counts as open:
    what it resolves to is not ours to know."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_open_gateway(settings: Settings) -> None:
    """Without keys anyone who reaches the gateway is every tenant at once: that is for a
    laptop. Elsewhere, turn keys on or say so explicitly."""
    if settings.auth == "off" and not settings.allow_open_gateway:
        if not is_loopback(settings.gateway_host):
            raise SystemExit(
                f"refusing to start: the gateway would listen on {settings.gateway_host} "
                "with LORAMEM_AUTH=off, so anyone who reaches it could read and change "
                "every tenant's facts. Set LORAMEM_AUTH=required (and make a key with "
                "`loramem keys create --tenant T --role admin`), listen on 127.0.0.1, or "
                "set LORAMEM_ALLOW_OPEN_GATEWAY=true if something in front authenticates."
            )


def main(settings: Settings) -> None:
    import uvicorn

    refuse_open_gateway(settings)

    uvicorn.run(
        create_app(settings, freeze_after_start=True),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_level="info",
        access_log=False,  # request counts and latencies are in /metrics
        # Longer than clients keep idle connections (httpx and the OpenAI SDKs: 5 s; load
        # balancers: 60 s), so that no client sends on a connection the gateway is closing.
        timeout_keep_alive=GATEWAY_KEEP_ALIVE_S,
    )
