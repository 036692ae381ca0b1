"""An engine SIGKILLed under traffic with two engines behind one gateway. Clients send
non-streamed and streamed chat to a module whose preferred engine is the one killed; the
kill lands while streams are mid-answer.

Shows: 0 failed non-streamed requests (they fail over before any byte is sent); every
stream ends with `data: [DONE]`, and each one cut mid-way carries an error event before
it (counted in loramem_stream_aborts_total)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from loramem.engine import engine_command, engine_env
from loramem.names import module_id
from server.engines import EnginePool
from tests.chaos.support import ClientThreads, RedisServer, Stack, figures, free_port
from tests.e2e.support import System, spawn, wait_http

PLAIN_CLIENTS = 4
STREAM_CLIENTS = 3
AFTER_KILL_S = 15.0


@dataclass
class Stream:
    events: list[dict] = field(default_factory=list)
    done: bool = False  # ended with data: [DONE]
    finished: bool = False  # a choice with a finish_reason: answered to the end
    error: bool = False  # an error event
    failed: str = ""


class Clients(ClientThreads):
    def __init__(self, stack: Stack, module: str) -> None:
        self.stack, self.module = stack, module
        self.plain: list[int] = []  # status codes (0: transport error)
        self.streams: list[Stream] = []
        self.in_stream = threading.Semaphore(0)  # released at each stream's first event
        super().__init__([self._plain] * PLAIN_CLIENTS + [self._stream] * STREAM_CLIENTS)

    def _plain(self) -> None:
        while not self.stop.is_set():
            try:
                code = self.stack.chat("Where is the harbour?", self.module).status_code
            except httpx.HTTPError:
                code = 0
            self.plain.append(code)

    def _stream(self) -> None:
        while not self.stop.is_set():
            stream = Stream()
            self.streams.append(stream)
            body = {
                "model": self.module,
                "messages": [{"role": "user", "content": "Tell me a long story about a harbour."}],
                "temperature": 0,
                "max_tokens": 64,
                "stream": True,
            }
            try:
                with self.stack.http.stream(
                    "POST", "/v1/chat/completions", json=body, headers={"x-loramem-tenant": "chaos"}
                ) as reply:
                    if reply.status_code != 200:
                        stream.failed = f"HTTP {reply.status_code}"
                        continue
                    for line in reply.iter_lines():
                        self._event(stream, line)
            except httpx.HTTPError as exc:
                stream.failed = repr(exc)

    def _event(self, stream: Stream, line: str) -> None:
        if not line.startswith("data: "):
            return
        if line == "data: [DONE]":
            stream.done = True
            return
        event = json.loads(line[6:])
        if not stream.events:
            self.in_stream.release()
        stream.events.append(event)
        if "error" in event:
            stream.error = True
        elif any(c.get("finish_reason") for c in event.get("choices", [])):
            stream.finished = True


@pytest.mark.timeout(1500)
def test_an_engine_killed_under_traffic_fails_no_plain_request_and_ends_cut_streams(
    tmp_path: Path, system: System
) -> None:
    extra_port = free_port()
    urls = [system.settings.engine_url, f"http://127.0.0.1:{extra_port}"]
    settings = system.settings.model_copy(update={"engine_port": extra_port})
    engine = spawn(engine_command(settings, system.model_path), engine_env(settings))
    try:
        wait_http(f"{urls[1]}/health", settings.engine_start_timeout_s, engine)
        pool = EnginePool(urls, spill_in_flight=8)
        for url in urls:
            pool.mark(url, True)
        module = next(  # a module the extra engine serves, so that killing it matters
            f"harbour-{i}"
            for i in range(100)
            if pool.candidates(f"{module_id('chaos', f'harbour-{i}')}@v1")[0] == urls[1]
        )
        with Stack(
            system,
            RedisServer(tmp_path),
            tmp_path,
            engines=urls,
            LORAMEM_ENGINE_SPILL_IN_FLIGHT="64",  # every request on the preferred engine
        ) as stack:
            posted = stack.post(
                "/facts", {"facts": ["The harbour has 12 piers."], "module": module}
            )
            assert posted.status_code == 202, posted.text
            stack.wait_job(posted.json()["job_id"])
            deadline = time.monotonic() + 120  # loaded eagerly or on the first request
            while (reply := stack.chat("Where is the harbour?", module)).headers.get(
                "x-loramem-engine"
            ) != "1" or reply.status_code != 200:
                assert time.monotonic() < deadline, reply.text
                time.sleep(1)
            with Clients(stack, module) as clients:
                for _ in range(STREAM_CLIENTS):  # every stream client is mid-answer
                    assert clients.in_stream.acquire(timeout=300), "no stream started"
                os.killpg(engine.pid, signal.SIGKILL)
                engine.wait()
                killed_at = len(clients.plain)
                time.sleep(AFTER_KILL_S)
            metrics = stack.http.get("/metrics").text
        aborts = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith("loramem_stream_aborts_total")
        )
    finally:
        if engine.poll() is None:
            os.killpg(engine.pid, signal.SIGKILL)
            engine.wait()
    streams = [s for s in clients.streams if s.events or s.failed]
    cut = [s for s in streams if not s.finished]
    figures(
        "engine-kill",
        plain_requests=len(clients.plain),
        plain_after_kill=len(clients.plain) - killed_at,
        plain_failed=sum(code != 200 for code in clients.plain),
        streams=len(streams),
        streams_cut=len(cut),
        cut_with_error_event=sum(s.error and s.done for s in cut),
        stream_aborts_metric=aborts,
    )
    assert all(code == 200 for code in clients.plain), clients.plain
    assert len(clients.plain) > killed_at  # requests went on after the kill
    assert not [s.failed for s in streams if s.failed]
    assert cut, "the kill cut no stream"
    assert all(s.error and s.done for s in cut)
    assert all(s.done for s in streams)
    assert aborts >= len(cut)
