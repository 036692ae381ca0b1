"""A job told as published is answered by its version on the gateway that told it: GET
/jobs/{id} waits for this gateway's event follower (`EventFollower.wait_routed`). Real
Redis, gateway and embedding model; the engine is a stub. The follower is slowed, so the
registry is ahead of it, as it is for a few milliseconds after every publish."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from loramem.datasets import PhoneEntry
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import SentenceEmbedder, to_bytes
from router.router import Router
from server.app import create_app
from server.reconcile import EventFollower
from tests.integration.test_answer_modes import _engine, embedder  # noqa: F401  (fixture)
from tests.recipes import NO_FILES, TRAINED

ANN = PhoneEntry("Summer Morrow", "555-0101")
PEOPLE = module_id("t", "people")
TENANT = {"x-loramem-tenant": "t"}


def _post_and_publish(registry: Registry, embed: Callable[[list[str]], np.ndarray]) -> str:
    """A fact posted and its version published as the trainer does; the job's id."""
    job, ids = registry.facts.add("t", [ANN.fact], [None], [to_bytes(embed([ANN.fact])[0])], PEOPLE)
    registry.jobs.skip_to_publishing(job.id, {})
    info = VersionInfo(PEOPLE, 1, "t", ids, 1.0, NO_FILES, TRAINED)
    registry.modules.publish(info, {}, job_id=job.id)
    return job.id


def test_a_job_told_as_published_is_answered_by_its_version(
    settings: Settings,
    registry: Registry,
    embedder: SentenceEmbedder,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with TestClient(create_app(settings, embedder=embedder)) as client:
        state = client.app.state  # type: ignore[attr-defined]
        state.completions.forwarder.http = httpx.AsyncClient(transport=httpx.MockTransport(_engine))
        apply = state.router.apply_published

        def slow_apply(tenant: str, module: str, version: int) -> None:
            time.sleep(1.0)  # the follower behind the registry
            apply(tenant, module, version)

        monkeypatch.setattr(state.router, "apply_published", slow_apply)
        job_id = _post_and_publish(registry, embedder.embed)
        assert client.get(f"/jobs/{job_id}", headers=TENANT).json()["status"] == "published"
        body = {"model": "auto", "messages": [{"role": "user", "content": ANN.question}]}
        reply = client.post("/v1/chat/completions", json=body, headers=TENANT)
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-loramem-outcome"] == "module"
    assert reply.headers["x-loramem-module"] == "people@v1"


def test_the_follower_tells_when_it_routes_with_a_version(
    settings: Settings,
    registry: Registry,
    embedder: SentenceEmbedder,  # noqa: F811
) -> None:
    router = Router.from_settings(registry, embedder, settings)
    follower = EventFollower(registry, router, threading.Event())  # stepped by hand here
    _post_and_publish(registry, embedder.embed)
    assert not follower.wait_routed(PEOPLE, 1, timeout_s=0.05)  # not applied yet
    waited: list[bool] = []
    waiter = threading.Thread(target=lambda: waited.append(follower.wait_routed(PEOPLE, 1, 30)))
    waiter.start()
    for _ in range(50):  # the publish's events, within a few reads
        if follower.step(block_ms=100) and not waiter.is_alive():
            break
    waiter.join(timeout=30)
    assert waited == [True]
    assert router.route("t", "auto", ANN.question).module == PEOPLE
    assert follower.wait_routed(PEOPLE, 1, timeout_s=0)  # no wait once applied
