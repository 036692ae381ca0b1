"""Forwarding to the engines: failover, on-demand adapter loading, requests in flight.

Returns the engine's reply as it came (an httpx response, open when streamed); building
the gateway's answer from it is the caller's business.
"""

from __future__ import annotations

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
        # Requests in flight per engine model name: a retired version is unloaded only
        # once nothing runs on it.
        self.in_flight: Counter[str] = Counter()

    async def forward(
        self, target: str, is_module: bool, path: str, body: dict[str, Any], stream: bool
    ) -> Upstream:
        """Send `body` for engine model `target`; it counts as in flight until released."""
        self.in_flight[target] += 1
        release = partial(self._release, target)
        try:
            engine, reply = await self._send(target, is_module, path, body, stream)
        except BaseException:
            release()
            raise
        return Upstream(engine, reply, release)

    def _release(self, target: str) -> None:
        self.in_flight[target] -= 1

    async def _send(
        self, target: str, is_module: bool, path: str, body: dict[str, Any], stream: bool
    ) -> tuple[str, httpx.Response]:
        """Send to the preferred engine, and load a module version the engine lacks (it
        restarted, or joined late) before retrying. Fail over to the next engine on any
        transport error before a byte reached the client: a refused or dropped connection
        (the engine is marked down), or a timeout (it is busy or hung; not marked). A
        streamed reply has returned nothing to the client until this returns."""
        for engine in self.pool.candidates(target):
            request = self.http.build_request("POST", engine + path, json=body)
            self.pool.in_flight[engine] += 1
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
            return engine, reply
        raise EngineUnavailable("no engine is reachable")
