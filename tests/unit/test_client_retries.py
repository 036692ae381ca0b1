"""The Python client asks again after a 429 or 503, as the openai package does for chat."""

from __future__ import annotations

import httpx
import pytest

from loramem.client import Client, GatewayError


def _gateway(refusals: list[httpx.Response]) -> tuple[httpx.Client, list[httpx.Request]]:
    """Answers with `refusals` first, then a job; records every request."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= len(refusals):
            return refusals[len(seen) - 1]
        return httpx.Response(200, json={"id": "j1", "status": "queued"})

    return httpx.Client(transport=httpx.MockTransport(handle)), seen


def _over_rate() -> httpx.Response:
    error = {"message": "over 600 requests per 60 s for this key", "type": "rate_limit"}
    return httpx.Response(429, headers={"retry-after": "0"}, json={"error": error})


def test_a_refused_call_is_asked_again_after_retry_after() -> None:
    busy = httpx.Response(503, headers={"retry-after": "0"}, json={"error": {"message": "busy"}})
    http, seen = _gateway([_over_rate(), busy])
    assert Client("http://gw", max_retries=2, http=http).job("j1")["id"] == "j1"
    assert len(seen) == 3


def test_retries_are_bounded_and_other_errors_are_not_retried() -> None:
    http, seen = _gateway([_over_rate()] * 5)
    with pytest.raises(GatewayError) as refused:
        Client("http://gw", max_retries=2, http=http).job("j1")
    assert refused.value.status == 429 and len(seen) == 3

    missing = httpx.Response(404, json={"error": {"message": "no such job"}})
    http, seen = _gateway([missing])
    with pytest.raises(GatewayError):
        Client("http://gw", max_retries=2, http=http).job("j1")
    assert len(seen) == 1
