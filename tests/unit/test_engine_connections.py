"""Engine clients never send on a connection the engine is about to close.

vLLM closes a connection idle for its keep-alive time. A request sent on it at that moment
meets a closed socket ("Server disconnected without sending a response"), which the
gateway took for a dead engine. The server below plays that moment out: a request that
arrives on a connection idle for its keep-alive time is dropped unanswered."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from loramem.engine import ENGINE_KEEPALIVE_EXPIRY_S, EngineClient

SERVER_KEEP_ALIVE_S = 2.5  # shorter than vLLM's 5 s, so the test is quick


class ClosingServer:
    """HTTP/1.1 with keep-alive, answering every GET with 200, but dropping the connection
    without an answer when a request comes after SERVER_KEEP_ALIVE_S of idleness."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:  # closed at the end of the test
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            idle_since, pending = time.monotonic(), b""
            while data := conn.recv(65536):
                pending += data
                if b"\r\n\r\n" not in pending:
                    continue
                pending = b""
                if time.monotonic() - idle_since >= SERVER_KEEP_ALIVE_S:
                    self.dropped += 1
                    return  # the server's close crossed the request
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                idle_since = time.monotonic()


@pytest.fixture
def server() -> Iterator[ClosingServer]:
    server = ClosingServer()
    yield server
    server.listener.close()


def test_a_request_after_an_idle_spell_goes_out_on_a_new_connection(
    server: ClosingServer,
) -> None:
    assert ENGINE_KEEPALIVE_EXPIRY_S < SERVER_KEEP_ALIVE_S
    client = EngineClient(server.url)
    assert client.http.get("/health").status_code == 200
    time.sleep(SERVER_KEEP_ALIVE_S + 0.2)
    assert client.http.get("/health").status_code == 200
    assert (server.connections, server.dropped) == (2, 0)


def test_httpx_default_pool_would_have_failed(server: ClosingServer) -> None:
    """The same two requests with httpx's own pool (idle connections kept 5 s): the second
    reuses the connection and is dropped. This is what the gateway met in CI."""
    client = httpx.Client(base_url=server.url)
    assert client.get("/health").status_code == 200
    time.sleep(SERVER_KEEP_ALIVE_S + 0.2)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/health")
    assert server.dropped == 1
