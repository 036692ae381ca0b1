"""Module names per tenant, through the real gateway and Redis (keys required): two
tenants that both name a module `notes` each get their own module, facts, jobs, listings
and answers, and see only the name `notes`, never the engine's name of the other's. The
engine is an httpx MockTransport that answers with the model name it was sent
(tests/e2e/test_tenants.py asks the real engine)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.names import module_id, served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED

FACTS = {"a": "Ann Lee lives in Oslo.", "b": "Bob Ray lives in Lima."}


def _engine(request: httpx.Request) -> httpx.Response:
    """The model it was asked for, as vLLM names it in its answer, and in the text."""
    model = json.loads(request.read())["model"]
    if request.url.path.endswith("/models"):
        return httpx.Response(200, json={"data": []})
    if "@v9." in model:
        return httpx.Response(400, json={"error": {"message": f"`{model}`: prompt too long"}})
    message = {"role": "assistant", "content": f"answered by {model}"}
    return httpx.Response(200, json={"model": model, "choices": [{"message": message}]})


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    settings = settings.model_copy(update={"auth": "required"})
    with TestClient(create_app(settings, embedder=fake_embedder)) as test_client:
        forwarder = test_client.app.state.completions.forwarder  # type: ignore[attr-defined]
        forwarder.http = httpx.AsyncClient(transport=httpx.MockTransport(_engine))
        yield test_client


def _keys(registry: Registry) -> dict[str, dict[str, str]]:
    return {
        t: {"authorization": f"Bearer {registry.api_keys.create(t, 'writer')[0]}"} for t in FACTS
    }


def _chat(client: TestClient, headers: dict[str, str], model: str, text: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return client.post("/v1/chat/completions", json=body, headers=headers)


def test_two_tenants_naming_a_module_alike_each_get_their_own(
    client: TestClient, registry: Registry
) -> None:
    keys = _keys(registry)
    posted = {}
    for tenant, fact in FACTS.items():
        body = {"facts": [fact], "module": "notes"}
        reply = client.post("/facts", json=body, headers=keys[tenant])
        assert reply.status_code == 202, reply.text
        posted[tenant] = reply.json()
        assert posted[tenant]["module"] == "notes"
    ids = {t: module_id(t, "notes") for t in FACTS}
    assert ids["a"] != ids["b"]
    for tenant, body in posted.items():
        info = VersionInfo(ids[tenant], 1, tenant, body["fact_ids"], 1.0, NO_FILES, TRAINED)
        registry.modules.publish(info, {})

    deadline = time.monotonic() + 5  # the event follower applies publishes asynchronously
    while len(client.app.state.router.all_active()) < 2:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for tenant, fact in FACTS.items():
        headers = keys[tenant]
        assert [(f["text"], f["module"]) for f in client.get("/facts", headers=headers).json()] == [
            (fact, "notes")
        ]
        modules = client.get("/modules", headers=headers).json()
        assert [(m["name"], m["served_name"], m["fact_count"]) for m in modules] == [
            ("notes", "notes@v1", 1)
        ]
        job = client.get(f"/jobs/{posted[tenant]['job_id']}", headers=headers).json()
        assert job["module"] == "notes"
        models = [m["id"] for m in client.get("/v1/models", headers=headers).json()["data"]]
        assert models.count("notes") == 1 and not any("~" in m for m in models)
        for model, question in (("notes", "hello"), ("notes@v1", "hello"), ("auto", fact)):
            reply = _chat(client, headers, model, question)
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-loramem-module"] == "notes@v1"
            # the engine was asked for this tenant's module; the answer names it `notes@v1`
            assert reply.json()["model"] == "notes@v1"
            content = reply.json()["choices"][0]["message"]["content"]
            assert content == f"answered by {served_name(ids[tenant], 1, NO_FILES)}"


def test_an_engine_error_names_the_module_as_its_tenant_knows_it(
    client: TestClient, registry: Registry
) -> None:
    headers = _keys(registry)["a"]
    body = client.post("/facts", json={"facts": ["x"], "module": "notes"}, headers=headers).json()
    for version in range(1, 10):  # v9: the mock engine refuses the request
        info = VersionInfo(
            module_id("a", "notes"), version, "a", body["fact_ids"], 1, NO_FILES, TRAINED
        )
        registry.modules.publish(info, {})
    deadline = time.monotonic() + 5
    while client.app.state.router.all_active().get(module_id("a", "notes")) != 9:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    reply = _chat(client, headers, "notes", "hello")
    assert reply.status_code == 400 and "a~notes" not in reply.text, reply.text
    assert reply.json()["error"]["message"] == "`notes@v9`: prompt too long"
