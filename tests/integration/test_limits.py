"""Limits and backpressure through the real gateway and real Redis, the engine stubbed
by an httpx MockTransport: body size, request bounds, quotas, rate windows, in flight."""

from __future__ import annotations

import asyncio
import resource
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import redis
from fastapi import FastAPI

from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED

Handler = Callable[[httpx.Request], Awaitable[httpx.Response]]
USER = {"role": "user", "content": "hello"}


async def _engine(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
        },
    )


@asynccontextmanager
async def gateway(
    settings: Settings, embedder: Any, engine: Handler = _engine, **limits: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The app with its lifespan run, an httpx client over ASGI (it streams request
    bodies chunk by chunk), and the engine answered by `engine`."""
    app = create_app(settings.model_copy(update=limits), embedder=embedder)
    async with app.router.lifespan_context(app):
        app.state.completions.forwarder.http = httpx.AsyncClient(
            transport=httpx.MockTransport(engine)
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            yield app, client


def assert_openai_error(reply: httpx.Response, status: int) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error  # type: ignore[no-any-return]


def test_a_50_mb_streamed_body_is_refused_413_before_it_is_read(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    chunk = b"x" * 65_536
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(50 * 1024 * 1024 // len(chunk)):
            sent += len(chunk)
            yield chunk  # the same bytes each time: the client holds no copy

    async def scenario() -> tuple[httpx.Response, int, int]:
        async with gateway(settings, fake_embedder, max_body_bytes=1024 * 1024) as (_, client):
            rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            tracemalloc.start()
            base, _ = tracemalloc.get_traced_memory()
            reply = await client.post(
                "/facts", content=body(), headers={"content-type": "application/json"}
            )
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rss_growth_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib
            return reply, peak - base, rss_growth_kib

    reply, growth_bytes, rss_growth_kib = asyncio.run(scenario())
    print(
        f"\n50 MB body, limit 1 MiB: 413 after {sent / 2**20:.1f} MiB sent; traced peak "
        f"growth {growth_bytes / 2**20:.2f} MiB, max RSS growth {rss_growth_kib / 1024:.1f} MiB"
    )
    assert_openai_error(reply, 413)
    assert sent < 3 * 1024 * 1024  # the rest of the body was never read
    assert growth_bytes < 5 * 1024 * 1024


def test_a_declared_length_over_the_limit_is_refused_413(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def scenario() -> httpx.Response:
        async with gateway(settings, fake_embedder, max_body_bytes=2048) as (_, client):
            return await client.post("/facts", json={"facts": ["x" * 3000]})

    assert_openai_error(asyncio.run(scenario()), 413)


CHAT_LIMITS = {"max_messages": 3, "max_prompt_chars": 50, "max_completion_tokens": 16}
BAD_CHATS = [
    ({"messages": [USER] * 4}, "messages"),
    ({"messages": [{"role": "user", "content": "x" * 51}]}, "messages"),
    ({"messages": [USER], "max_tokens": 17}, "max_tokens"),
    ({"messages": [USER], "max_completion_tokens": 10_000}, "max_completion_tokens"),
    ({"messages": [USER], "n": 9}, "n"),
]


@pytest.mark.parametrize(("body", "param"), BAD_CHATS)
def test_chat_requests_past_a_bound_are_400(
    settings: Settings, registry: Registry, fake_embedder: Any, body: dict, param: str
) -> None:
    async def scenario() -> httpx.Response:
        async with gateway(settings, fake_embedder, **CHAT_LIMITS) as (_, client):
            ok = await client.post(
                "/v1/chat/completions", json={"model": "auto", "messages": [USER]}
            )
            assert ok.status_code == 200, ok.text
            return await client.post("/v1/chat/completions", json={"model": "auto", **body})

    assert assert_openai_error(asyncio.run(scenario()), 400)["param"] == param


def test_a_text_completion_over_the_prompt_bound_is_400(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def scenario() -> httpx.Response:
        async with gateway(settings, fake_embedder, **CHAT_LIMITS) as (_, client):
            return await client.post("/v1/completions", json={"model": "auto", "prompt": "x" * 51})

    assert assert_openai_error(asyncio.run(scenario()), 400)["param"] == "prompt"


@pytest.mark.parametrize(
    ("training", "param"),
    [
        ({"target_loss": 0}, "training.target_loss"),
        ({"target_loss": 0.0001}, "training.target_loss"),
        ({"max_steps": 601}, "training.max_steps"),
    ],
)
def test_training_knobs_past_the_job_budget_are_400_and_store_nothing(
    settings: Settings,
    registry: Registry,
    redis_client: redis.Redis,
    fake_embedder: Any,
    training: dict,
    param: str,
) -> None:
    async def scenario() -> httpx.Response:
        async with gateway(settings, fake_embedder, rate_requests_per_window=0) as (_, client):
            before = redis_client.dbsize()
            reply = await client.post("/facts", json={"facts": ["a"], "training": training})
            assert redis_client.dbsize() == before
            ok = await client.post("/facts", json={"facts": ["a"], "training": {"max_steps": 600}})
            assert ok.status_code == 202, ok.text
            return reply

    assert assert_openai_error(asyncio.run(scenario()), 400)["param"] == param


@pytest.mark.parametrize(
    ("quota", "first", "second"),
    [
        ({"quota_facts": 3}, {"facts": ["a", "b"]}, {"facts": ["c", "d"]}),
        (
            {"quota_modules": 1},
            {"facts": ["a"], "module": "one"},
            {"facts": ["b"], "module": "two"},
        ),
        ({"quota_open_jobs": 1}, {"facts": ["a"]}, {"facts": ["b"]}),
    ],
)
def test_over_a_quota_is_403_quota_exceeded_and_stores_nothing(
    settings: Settings,
    registry: Registry,
    redis_client: redis.Redis,
    fake_embedder: Any,
    quota: dict,
    first: dict,
    second: dict,
) -> None:
    async def scenario() -> httpx.Response:
        async with gateway(settings, fake_embedder, rate_requests_per_window=0, **quota) as (
            _,
            client,
        ):
            assert (await client.post("/facts", json=first)).status_code == 202
            before = redis_client.dbsize()
            reply = await client.post("/facts", json=second)
            assert redis_client.dbsize() == before
            return reply

    error = assert_openai_error(asyncio.run(scenario()), 403)
    assert error["type"] == "quota_exceeded"


def test_a_finished_job_no_longer_counts_against_the_open_jobs_quota(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def scenario() -> None:
        limits = {"quota_open_jobs": 1, "rate_requests_per_window": 0}
        async with gateway(settings, fake_embedder, **limits) as (_, client):
            job = (await client.post("/facts", json={"facts": ["a"]})).json()["job_id"]
            assert (await client.post("/facts", json={"facts": ["b"]})).status_code == 403
            registry.jobs.fail(job, "test")
            assert (await client.post("/facts", json={"facts": ["b"]})).status_code == 202

    asyncio.run(scenario())


def test_adapter_bytes_count_published_blobs_until_swept_and_gate_new_facts(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    stored = registry.facts.add("default", ["a"], [None], [b"\0" * 256])[1]
    blob = {"adapter_model.safetensors": b"w" * 700, "adapter_config.json": b"{}"}
    for version in (1, 2):
        info = VersionInfo("m-quota", version, "default", stored, 1.0, NO_FILES, TRAINED)
        registry.modules.publish(info, blob)
    assert registry.modules.tenant_adapter_bytes("default") == 1404

    async def post() -> int:
        async with gateway(settings, fake_embedder, quota_adapter_bytes=1000) as (_, client):
            return (await client.post("/facts", json={"facts": ["b"]})).status_code

    assert asyncio.run(post()) == 403
    assert registry.modules.sweep_retired(retention_s=0) == [("m-quota", 1)]
    assert registry.modules.sweep_retired(retention_s=0) == []  # subtracted once
    assert registry.modules.tenant_adapter_bytes("default") == 702
    assert asyncio.run(post()) == 202


async def _until_fresh_window(window_s: int) -> None:
    """Start right after a window boundary, so a test's requests share one window."""
    await asyncio.sleep(window_s - time.time() % window_s + 0.01)


def test_requests_past_the_rate_are_429_with_retry_after_and_recover_next_window(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def scenario() -> None:
        limits = {"rate_requests_per_window": 3, "rate_window_s": 1}
        async with gateway(settings, fake_embedder, **limits) as (_, client):
            await _until_fresh_window(1)
            for _ in range(3):
                assert (await client.get("/facts")).status_code == 200
            refused = await client.get("/facts")
            assert_openai_error(refused, 429)
            assert refused.headers["retry-after"] == "1"
            other = await client.get("/facts", headers={"x-loramem-tenant": "other"})
            assert other.status_code == 200  # auth off: each tenant has its own window
            await asyncio.sleep(int(refused.headers["retry-after"]))
            assert (await client.get("/facts")).status_code == 200

    asyncio.run(scenario())


def test_with_keys_each_key_of_a_tenant_has_its_own_request_window(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    first = {"authorization": f"Bearer {registry.api_keys.create('t', 'writer')[0]}"}
    second = {"authorization": f"Bearer {registry.api_keys.create('t', 'writer')[0]}"}

    async def scenario() -> None:
        limits = {"auth": "required", "rate_requests_per_window": 3, "rate_window_s": 2}
        async with gateway(settings, fake_embedder, **limits) as (_, client):
            await _until_fresh_window(2)
            for _ in range(3):
                assert (await client.get("/facts", headers=first)).status_code == 200
            refused = await client.get("/facts", headers=first)
            assert_openai_error(refused, 429)
            assert int(refused.headers["retry-after"]) >= 1
            # the same tenant's other key: a window of its own, reads and writes go on
            facts = {"facts": ["X is y."]}
            assert (await client.post("/facts", json=facts, headers=second)).status_code == 202
            assert (await client.get("/facts", headers=second)).status_code == 200
            assert_openai_error(await client.get("/facts", headers=first), 429)

    asyncio.run(scenario())


def test_completion_tokens_past_the_rate_are_429_until_the_next_window(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def scenario() -> None:
        limits = {"rate_tokens_per_window": 5, "rate_window_s": 2}
        chat = {"model": "auto", "messages": [USER]}
        async with gateway(settings, fake_embedder, **limits) as (_, client):
            await _until_fresh_window(2)
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200
            refused = await client.post("/v1/chat/completions", json=chat)  # 5 tokens used
            assert_openai_error(refused, 429)
            await asyncio.sleep(int(refused.headers["retry-after"]))
            assert (await client.post("/v1/chat/completions", json=chat)).status_code == 200

    asyncio.run(scenario())


ENGINE_DELAY_S = 4.0


def test_a_flood_past_the_in_flight_limit_is_refused_at_once_not_queued(
    settings: Settings, registry: Registry, fake_embedder: Any
) -> None:
    async def slow_engine(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(ENGINE_DELAY_S)  # the requests let in stay in flight meanwhile
        return await _engine(request)

    async def scenario() -> list[tuple[int, float]]:
        limit = 4
        async with gateway(
            settings, fake_embedder, slow_engine, completions_max_in_flight=limit
        ) as (_, client):

            async def one() -> tuple[int, float]:
                started = time.perf_counter()
                chat = {"model": "auto", "messages": [USER]}
                reply = await client.post("/v1/chat/completions", json=chat)
                if reply.status_code == 429:
                    assert reply.headers["retry-after"]
                return reply.status_code, time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(10 * limit)))

    results = asyncio.run(scenario())
    statuses = [status for status, _ in results]
    slowest_refusal_s = max(latency for status, latency in results if status == 429)
    print(
        f"\nflood of 40 against an in-flight limit of 4: {statuses.count(200)} answered 200, "
        f"{statuses.count(429)} refused 429, slowest refusal {slowest_refusal_s * 1000:.0f} ms "
        f"(the engine takes {ENGINE_DELAY_S:.0f} s)"
    )
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 4 and 429 in statuses
    # A refusal never waits for the requests in flight: it comes back long before the
    # engine answers any of them (no absolute time bound: these machines are noisy).
    assert slowest_refusal_s < ENGINE_DELAY_S / 2
