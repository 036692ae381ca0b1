"""Engine and Redis faults with fakes: failover before any byte, a stream cut mid-way,
a worker loop that outlives Redis errors, a heartbeat that notices a lost lock."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import redis

from loramem.queue import Claim
from router.router import RouteDecision
from server.completions import CompletionService
from server.engines import EnginePool
from server.forwarding import EngineForwarder
from server.metrics import GatewayMetrics
from trainer import worker as worker_module
from trainer.worker import Heartbeat, Worker

A, B = "http://a", "http://b"


async def _no_load(_engine: str, _name: str) -> bool:
    return False


def _forward(fail_with: Exception) -> tuple[str, int]:
    def engine(request: httpx.Request) -> httpx.Response:
        if request.url.host == "a":
            raise fail_with
        return httpx.Response(200, json={"ok": True})

    async def go() -> tuple[str, int]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(engine)) as http:
            forwarder = EngineForwarder(http, EnginePool([A, B], 4), _no_load)
            forwarder.pool.candidates = lambda _name: [A, B]  # type: ignore[method-assign]
            up = await forwarder.forward("base", False, "/v1/chat/completions", {}, False)
            up.release()
            return up.engine, up.reply.status_code

    return asyncio.run(go())


def test_a_non_streamed_request_fails_over_on_timeouts_and_read_errors() -> None:
    for error in (
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("no answer"),
        httpx.ReadError("reset"),
        httpx.ConnectError("refused"),
        httpx.RemoteProtocolError("closed"),
    ):
        assert _forward(error) == (B, 200), error


class _CutStream(httpx.AsyncByteStream):
    async def __aiter__(self):  # type: ignore[no-untyped-def]
        yield b'data: {"model":"t~m@v1","choices":[{"delta":{"content":"Hi t~m@v1"}}]}\n\n'
        raise httpx.ReadError("engine died")


def _relayed(metrics: GatewayMetrics) -> list[bytes]:
    async def go() -> list[bytes]:
        reply = httpx.Response(200, stream=_CutStream())
        service = CompletionService.__new__(CompletionService)
        service.metrics = metrics
        decision = RouteDecision("t~m@v1", "t~m", "module")
        return [line async for line in service._relay(reply, decision, "m", 0.0, lambda: None)]

    return asyncio.run(go())


def test_a_stream_cut_mid_way_ends_with_an_error_event_and_is_counted() -> None:
    metrics = GatewayMetrics()
    lines = _relayed(metrics)
    tail = b"".join(lines[-1:]).decode()
    assert tail.startswith('data: {"error": {') and tail.rstrip().endswith("data: [DONE]")
    assert metrics.registry.get_sample_value("loramem_stream_aborts_total") == 1


def test_a_relayed_stream_names_the_module_as_its_tenant_knows_it() -> None:
    """The engine's model name holds the module id (tenant~name); the chunks show the
    name only, and leave the answer's own text alone."""
    first = _relayed(GatewayMetrics())[0].decode()
    assert first.startswith('data: {"model":"m@v1",') and '"content":"Hi t~m@v1"' in first


def test_the_worker_loop_survives_redis_errors_and_goes_on(monkeypatch: Any) -> None:
    monkeypatch.setattr(worker_module, "REDIS_BACKOFF_MIN_S", 0.01)
    worker = Worker.__new__(Worker)
    worker.consumer, worker._stopping = "w", threading.Event()
    calls: list[int] = []

    def run_once() -> bool:
        calls.append(1)
        if len(calls) <= 2:  # Redis is away twice in a row: backed off, not dead
            raise redis.ConnectionError("Connection refused")
        worker.stop()
        return True

    worker.run_once = run_once  # type: ignore[method-assign]
    worker.run_forever()
    assert len(calls) == 3


def test_the_heartbeat_notices_a_lost_lock() -> None:
    class Queue:
        def heartbeat(self, consumer: str, claim: Claim) -> None:
            pass

    class Jobs:
        def status(self, job_id: str) -> None:
            raise AssertionError("a beat that lost the lock stops before this")

    class Lock:
        key = "lock:module:m"

        def renew(self) -> bool:
            return False  # expired, maybe taken by another worker

    claim = Claim("t", "1-0", "j")
    with Heartbeat(Queue(), Jobs(), "w", claim, Lock(), 0.01) as beat:  # type: ignore[arg-type]
        assert beat.lost.wait(5)
