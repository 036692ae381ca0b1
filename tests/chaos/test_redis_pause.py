"""Redis paused (SIGSTOP) under a running gateway for PAUSE_S: /healthz answers
throughout, chat on a published module still routes and answers from the routing state,
POST /facts is a 503 with Retry-After within the client's timeout, the follower and the
reconciler threads live on, and after SIGCONT everything catches up by itself: ingest is
accepted again and a version published after the pause is served.

The engine is an httpx MockTransport (it echoes the request, which shows the route); the
gateway, its threads and Redis are real. Redis restarted under traffic with the real
engine is tests/chaos/test_redis_restart.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from server.reconcile import EventFollower, Reconciler
from tests.chaos.support import RedisServer, figures
from tests.recipes import NO_FILES, TRAINED

SOCKET_TIMEOUT_S = 1.0
PAUSE_S = 10.0


def _engine(request: httpx.Request) -> httpx.Response:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
    return httpx.Response(200, json={**body, "echo": request.read().decode()})


def _gateway_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if isinstance(t, EventFollower | Reconciler)]


def test_chat_and_health_go_on_while_redis_is_paused(
    tmp_path: Path, settings: Settings, fake_embedder
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = settings.model_copy(
        update={
            "redis_url": server.url,
            "redis_socket_timeout_s": SOCKET_TIMEOUT_S,
            "redis_connect_timeout_s": 0.5,
            "worker_block_ms": 100,
        }
    )
    registry = Registry.from_settings(settings)
    try:
        with TestClient(create_app(settings, embedder=fake_embedder)) as client:
            forwarder = client.app.state.completions.forwarder  # type: ignore[attr-defined]
            forwarder.http = httpx.AsyncClient(transport=httpx.MockTransport(_engine))
            body = client.post("/facts", json={"facts": ["the sky is green"]}).json()
            name, module = body["module"], module_id("default", body["module"])
            registry.modules.publish(
                VersionInfo(module, 1, "default", body["fact_ids"], 1.0, NO_FILES, TRAINED), {}
            )
            chat = {"model": name, "messages": [{"role": "user", "content": "sky?"}]}

            def served(version: int) -> None:
                deadline = time.monotonic() + 15
                while True:  # the follower applies the publish
                    reply = client.post("/v1/chat/completions", json=chat)
                    if reply.status_code == 200 and f"{module}@v{version}" in reply.json()["echo"]:
                        return
                    assert time.monotonic() < deadline, reply.text
                    time.sleep(0.05)

            served(1)
            threads = _gateway_threads()
            assert len(threads) == 2

            health = {"ok": 0, "failed": 0}
            chats = {"ok": 0, "failed": 0}
            stop = threading.Event()

            def probe_health() -> None:  # /healthz asked every 0.2 s throughout
                prober = TestClient(client.app)  # no `with`: the app's lifespan runs once
                while not stop.wait(0.2):
                    ok = prober.get("/healthz").status_code == 200
                    health["ok" if ok else "failed"] += 1

            prober = threading.Thread(target=probe_health, daemon=True)  # ends on a failure
            prober.start()
            server.pause()
            paused = time.monotonic()
            refusal_s = 0.0
            try:
                while time.monotonic() - paused < PAUSE_S:
                    started = time.monotonic()
                    refused = client.post("/facts", json={"facts": ["the sea is red"]})
                    refusal_s = max(refusal_s, time.monotonic() - started)
                    assert refused.status_code == 503, refused.text
                    assert refused.headers["Retry-After"]
                    assert refused.json()["error"]["type"] == "service_unavailable"
                    answered = client.post("/v1/chat/completions", json=chat)
                    ok = answered.status_code == 200 and f"{module}@v1" in answered.json()["echo"]
                    chats["ok" if ok else "failed"] += 1
                assert client.get("/readyz").status_code == 503
            finally:
                server.resume()
                resumed = time.monotonic()
            # Catching up: ingest accepted again, then a new version is followed.
            while client.post("/facts", json={"facts": ["the sea is red"]}).status_code != 202:
                assert time.monotonic() - resumed < 15, "ingest did not come back"
                time.sleep(0.2)
            ingest_back_s = time.monotonic() - resumed
            registry.modules.publish(
                VersionInfo(module, 2, "default", body["fact_ids"], 1.0, NO_FILES, TRAINED), {}
            )
            served(2)
            stop.set()
            prober.join()
            alive = [t for t in threads if t.is_alive()]
            figures(
                "redis-pause",
                pause_s=PAUSE_S,
                healthz_ok=health["ok"],
                healthz_failed=health["failed"],
                chat_ok=chats["ok"],
                chat_failed=chats["failed"],
                slowest_refusal_s=refusal_s,
                ingest_back_after_s=ingest_back_s,
                threads_alive=f"{len(alive)}/{len(threads)}",
            )
            assert health["failed"] == 0 and health["ok"] >= PAUSE_S / 0.2 / 2
            assert chats["failed"] == 0 and chats["ok"] > 0
            assert refusal_s < 4 * SOCKET_TIMEOUT_S + 2
            assert alive == threads
    finally:
        server.stop()
