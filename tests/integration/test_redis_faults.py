"""Redis going away under a running gateway: a throwaway redis-server is paused (SIGSTOP)
for a few seconds. Chat on a published module still routes and answers (the engine is an
httpx MockTransport), /healthz answers, POST /facts is a 503 with Retry-After within the
client's timeout, and after SIGCONT everything works again."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.registry import Registry
from loramem.settings import Settings
from server.app import create_app
from tests.services import on_throwaway_redis, throwaway_redis_server


@pytest.fixture
def throwaway_redis() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    with throwaway_redis_server() as (server, url):
        yield server, url


def _engine(request: httpx.Request) -> httpx.Response:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    return httpx.Response(200, json={**body, "echo": request.read().decode()})


def test_keys_verified_lately_keep_chat_going_while_redis_is_paused(
    throwaway_redis: tuple[subprocess.Popen[bytes], str], settings: Settings, fake_embedder
) -> None:
    """With keys required: a key Redis accepted lately still chats while Redis is paused
    (a key never seen, or a writer's write, gets 503: nothing can vouch for it); and once
    Redis answers again, a key revoked meanwhile fails at once and is forgotten."""
    server, url = throwaway_redis
    settings = on_throwaway_redis(settings, url, auth="required")
    registry = Registry.from_settings(settings)
    seen, revoked, unseen = (
        {"authorization": f"Bearer {registry.api_keys.create('a', 'writer')[0]}"} for _ in range(3)
    )
    chat = {"model": settings.base_name, "messages": [{"role": "user", "content": "hi"}]}

    def paused(during: Callable[[], None]) -> None:
        server.send_signal(signal.SIGSTOP)
        try:
            during()
        finally:
            server.send_signal(signal.SIGCONT)

    with TestClient(create_app(settings, embedder=fake_embedder)) as client:
        forwarder = client.app.state.completions.forwarder  # type: ignore[attr-defined]
        forwarder.http = httpx.AsyncClient(transport=httpx.MockTransport(_engine))
        for headers in (seen, revoked):  # Redis accepts both
            reply = client.post("/v1/chat/completions", json=chat, headers=headers)
            assert reply.status_code == 200, reply.text

        def outage() -> None:
            for headers in (seen, revoked):
                answered = client.post("/v1/chat/completions", json=chat, headers=headers)
                assert answered.status_code == 200, answered.text
            refused = client.post("/v1/chat/completions", json=chat, headers=unseen)
            assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
            write = client.post("/facts", json={"facts": ["x"]}, headers=seen)
            assert write.status_code == 503, write.text
            assert client.post("/v1/chat/completions", json=chat).status_code == 401

        paused(outage)
        registry.api_keys.revoke(revoked["authorization"].removeprefix("Bearer "))
        reply = client.post("/v1/chat/completions", json=chat, headers=revoked)
        assert reply.status_code == 401, reply.text  # Redis answers: revocation wins

        def forgotten() -> None:
            reply = client.post("/v1/chat/completions", json=chat, headers=revoked)
            assert reply.status_code == 503, reply.text
            reply = client.post("/v1/chat/completions", json=chat, headers=seen)
            assert reply.status_code == 200, reply.text

        paused(forgotten)
