"""Forwarding to the engines: placement, failover, on-demand adapter loading, requests in
flight.

Returns the engine's reply as it came (an httpx response, open when streamed); building
the gateway's answer from it is the caller's business.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx

from loramem.errors import EngineUnavailable
from server.engines import EnginePool

# Loads one module version into one engine (engine URL, served name); True when loaded.
AdapterLoader = Callable[[str, str], Awaitable[bool]]


@dataclass
class Upstream:
    engine: str  # the engine URL that answered
    reply: httpx.Response  # open until read or closed when streamed
    release: Callable[[], None]  # call once, when the reply is done with


class EngineForwarder:
    def __init__(self, http: httpx.AsyncClient, pool: EnginePool, load_adapter: AdapterLoader):
        self.http = http
        self.pool = pool
        self.load_adapter = load_adapter
        # Requests in flight per (engine URL, engine model name): a version is unloaded
        # from an engine only once nothing runs on it there.
        self.in_flight: Counter[tuple[str, str]] = Counter()

    async def forward(
        self, target: str, is_module: bool, path: str, body: dict[str, Any], stream: bool
    ) -> Upstream:
        """Send `body` for engine model `target`; it counts as in flight on the engine that
        answered until released. A module request counts toward its placement's demand."""
        if is_module:
            self.pool.demand.record(target, time.monotonic())
        engine, reply = await self._send(target, is_module, path, body, stream)
        self.in_flight[(engine, target)] += 1
        return Upstream(engine, reply, partial(self._release, engine, target))

    def _release(self, engine: str, target: str) -> None:
        self.in_flight[(engine, target)] -= 1

    async def _send(
        self, target: str, is_module: bool, path: str, body: dict[str, Any], stream: bool
    ) -> tuple[str, httpx.Response]:
        """Send to the first of the engines placement ranks for `target`. An engine
        lacking a module version fetches it itself (its resolver); one that answers 404
        anyway (no resolver, or Redis unreachable from it) gets it loaded by this gateway
        before the retry. Fail over to the next engine on any transport error before a byte
        reached the client: a refused or dropped connection (the engine is marked down),
        or a timeout (it is busy or hung; not marked). A streamed reply has returned
        nothing to the client until this returns."""
        for engine in self.pool.candidates(target):
            request = self.http.build_request("POST", engine + path, json=body)
            self.pool.in_flight[engine] += 1
            self.in_flight[(engine, target)] += 1  # forward() holds it on from the reply
            try:
                reply = await self.http.send(request, stream=stream)
                if reply.status_code == 404 and is_module:
                    await reply.aclose()
                    if await self.load_adapter(engine, target):
                        reply = await self.http.send(request, stream=stream)
            except (httpx.ConnectTimeout, httpx.NetworkError, httpx.RemoteProtocolError):
                self.pool.mark(engine, healthy=False)  # nothing was returned: try another
                continue
            except httpx.TimeoutException:
                continue  # nothing was returned: the next engine may answer in time
            except httpx.HTTPError as exc:
                raise EngineUnavailable(f"engine {engine} failed: {exc}") from exc
            finally:
                self.pool.in_flight[engine] -= 1
                self.in_flight[(engine, target)] -= 1
            return engine, reply
        raise EngineUnavailable("no engine is reachable")
