"""The official `openai` client against a gateway with keys required, on the real engine."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Iterator

import httpx
import openai
import pytest

from loramem.registry import Registry
from tests.e2e.support import E2E_REDIS_URL, System, spawn, wait_http

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def gateway_url(system: System) -> Iterator[str]:
    """One more gateway on the suite's engine and Redis, with LORAMEM_AUTH=required."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    env = {**system.env, "LORAMEM_GATEWAY_PORT": str(port), "LORAMEM_AUTH": "required"}
    gateway = spawn([sys.executable, "-m", "cli", "gateway"], env)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", 120, gateway)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(gateway.pid, signal.SIGTERM)
        gateway.wait(timeout=30)


def client(url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=300)


def test_the_openai_client_streams_with_a_reader_key(gateway_url: str) -> None:
    keys = Registry.from_url(E2E_REDIS_URL).api_keys
    reader, record = keys.create("e2e-auth", "reader", "openai client")
    stream = client(gateway_url, reader).chat.completions.create(
        model="auto",
        messages=QUESTION,
        stream=True,
        max_tokens=16,
        temperature=0,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert "Paris" in text, text
    assert "auto" in {m.id for m in client(gateway_url, reader).models.list()}

    with pytest.raises(openai.AuthenticationError):
        client(gateway_url, "lm-" + "x" * 43).chat.completions.create(
            model="auto",
            messages=QUESTION,
            max_tokens=4,
        )
    reply = httpx.post(
        f"{gateway_url}/facts",
        json={"facts": ["X is y."]},
        headers={"authorization": f"Bearer {reader}"},
    )
    assert reply.status_code == 403  # a reader asks, it does not teach
    keys.revoke(record.id)
    with pytest.raises(openai.AuthenticationError):
        client(gateway_url, reader).models.list()
