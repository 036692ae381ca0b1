"""The pure pieces of the gateway's limits: window arithmetic, the two ASGI middlewares
with a fake app, the completion request's bounds, the ingest pool's bound."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from loramem.errors import InvalidRequest, Overloaded
from loramem.registry.limits import window_of
from loramem.settings import Settings
from server.limits import BodyLimit, InFlightLimit, IngestPool, check_completion
from server.protocol import ChatCompletionRequest, CompletionRequest
from tests.conftest import FakeEmbedder


@pytest.mark.parametrize(
    ("now_s", "window_s", "index", "retry_after_s"),
    [(0.0, 60, 0, 60), (59.2, 60, 0, 1), (60.0, 60, 1, 60), (125.5, 60, 2, 55), (7.9, 2, 3, 1)],
)
def test_window_of(now_s: float, window_s: int, index: int, retry_after_s: int) -> None:
    assert window_of(now_s, window_s) == (index, retry_after_s)


async def _reading_app(scope: Any, receive: Any, send: Any) -> None:
    """Reads the whole body like FastAPI, turning a read error into a 400 of its own."""
    body = b""
    try:
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    except Exception:
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b"app's 400"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(app: Any, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None):  # type: ignore[no-untyped-def]
    sent: list[dict] = []
    pending = list(chunks)
    reads = 0

    async def receive() -> dict:
        nonlocal reads
        reads += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "path": "/facts", "headers": headers or []}
    asyncio.run(app(scope, receive, send))
    return sent, reads


def test_body_limit_passes_a_body_under_the_limit() -> None:
    sent, _ = _call(BodyLimit(_reading_app, 100), [b"x" * 60, b"x" * 40])
    assert sent[0]["status"] == 200 and sent[1]["body"] == b"100"


def test_body_limit_refuses_a_streamed_body_once_past_the_limit_and_reads_no_more() -> None:
    sent, reads = _call(BodyLimit(_reading_app, 100), [b"x" * 60] * 1000)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413 and reads == 2  # the app's own 400 was dropped
    error = json.loads(sent[1]["body"])["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == 413


def test_body_limit_refuses_a_declared_length_without_reading() -> None:
    sent, reads = _call(BodyLimit(_reading_app, 100), [b"x"], [(b"content-length", b"101")])
    assert sent[0]["status"] == 413 and reads == 0


def test_in_flight_limit_answers_429_at_once_and_frees_the_slot_when_done() -> None:
    async def scenario() -> list[int]:
        release = asyncio.Event()

        async def slow_app(scope: Any, receive: Any, send: Any) -> None:
            await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})

        limit = InFlightLimit(slow_app, limit=1)
        statuses: list[int] = []

        async def call() -> None:
            async def send(message: dict) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])
                    assert message["status"] == 200 or (b"retry-after", b"1") in message["headers"]

            scope = {"type": "http", "path": "/v1/chat/completions", "headers": []}
            await limit(scope, None, send)

        first = asyncio.create_task(call())
        await asyncio.sleep(0)
        await call()  # refused while the first is in flight
        release.set()
        await first
        await call()  # the slot is free again
        return statuses

    assert asyncio.run(scenario()) == [429, 200, 200]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "q"}] * 4}, "messages"),
        ({"messages": [{"role": "user", "content": "q" * 101}]}, "messages"),
        ({"messages": [{"role": "user", "content": "q"}], "max_tokens": 17}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "q"}], "max_tokens": "9"}, "max_tokens"),
        (
            {"messages": [{"role": "user", "content": "q"}], "max_completion_tokens": 0},
            "max_completion_tokens",
        ),
        ({"messages": [{"role": "user", "content": "q"}], "n": 3}, "n"),
        ({"messages": [{"role": "user", "content": "q"}], "n": True}, "n"),
    ],
)
def test_completion_bounds(body: dict, param: str) -> None:
    settings = Settings(
        max_messages=3, max_prompt_chars=100, max_completion_tokens=16, max_choices=2
    )
    with pytest.raises(InvalidRequest) as refused:
        check_completion(ChatCompletionRequest(model="auto", **body), settings)
    assert refused.value.param == param


def test_completion_bounds_pass_a_request_within_them() -> None:
    settings = Settings(max_prompt_chars=100, max_completion_tokens=16, max_choices=2)
    chat = {"messages": [{"role": "user", "content": "q"}], "max_tokens": 16, "n": 2}
    check_completion(ChatCompletionRequest(model="auto", **chat), settings)
    check_completion(CompletionRequest(model="auto", prompt=["a" * 50, "b" * 50]), settings)
    with pytest.raises(InvalidRequest):
        check_completion(CompletionRequest(model="auto", prompt=["a" * 50, "b" * 51]), settings)


def test_ingest_pool_refuses_past_its_queue_and_recovers() -> None:
    async def scenario() -> None:
        pool = IngestPool(threads=1, max_queued=2, embedder=FakeEmbedder())
        gate = threading.Event()
        running = [asyncio.create_task(pool.run(gate.wait)) for _ in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as refused:
            await pool.run(gate.wait)
        assert refused.value.retry_after_s >= 1
        gate.set()
        await asyncio.gather(*running)
        assert await pool.run(lambda: 7) == 7
        pool.close()

    asyncio.run(scenario())
