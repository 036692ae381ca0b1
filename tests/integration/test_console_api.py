"""What the memory console reads, through the real gateway and real Redis (the engine
stubbed by an httpx MockTransport): the page itself, the routing explanation, hit counts
and the job list, each scoped to the caller's tenant."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.api_console import CONSOLE_DIR
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED

FACT = "The phone number of Ada Quill is 555-0147."
QUESTION = "What is the phone number of Ada Quill?"
REPLY = {
    "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "555-0147"}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
}
STREAM = (
    'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
    '{"role": "assistant"}}]}\n\n'
    'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": '
    '{"content": "555-0147"}}]}\n\n'
    "data: [DONE]\n\n"
)


def _engine(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    assert "loramem" not in body  # the extension never reaches the engine
    if body.get("stream"):
        return httpx.Response(
            200, content=STREAM.encode(), headers={"content-type": "text/event-stream"}
        )
    return httpx.Response(200, json=REPLY)


def _gateway(settings: Settings, embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(settings, embedder=embedder)) as client:
        client.app.state.completions.forwarder.http = httpx.AsyncClient(  # type: ignore[attr-defined]
            transport=httpx.MockTransport(_engine)
        )
        yield client


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    yield from _gateway(settings, fake_embedder)


def _publish(client: TestClient, registry: Registry, tenant: str, facts: list[str]) -> dict:
    """Post facts and publish version 1 of their module as a worker would (no training)."""
    posted = client.post("/facts", json={"facts": facts}, headers={"x-loramem-tenant": tenant})
    body = posted.json()
    registry.jobs.skip_to_publishing(body["job_id"], {"phase": "publishing"})
    registry.modules.publish(
        VersionInfo(
            module_id(tenant, body["module"]), 1, tenant, body["fact_ids"], 0.9, NO_FILES, TRAINED
        ),
        {},
        job_id=body["job_id"],
    )
    deadline = time.monotonic() + 10
    while not client.get("/v1/models", headers={"x-loramem-tenant": tenant}).json()["data"][2:]:
        assert time.monotonic() < deadline  # the event follower indexes the publish
        time.sleep(0.05)
    return body  # type: ignore[no-any-return]


def _chat(client: TestClient, tenant: str, **extra) -> httpx.Response:  # type: ignore[no-untyped-def]
    body = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}], **extra}
    return client.post("/v1/chat/completions", json=body, headers={"x-loramem-tenant": tenant})


def test_the_console_page_is_served_whole_from_the_package(client: TestClient) -> None:
    redirect = client.get("/console", follow_redirects=False)
    assert redirect.status_code in (301, 307) and redirect.headers["location"].endswith("/console/")
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for name in ("console.js", "console.css"):
        assert client.get(f"/console/{name}").status_code == 200
    # Nothing is fetched from elsewhere: every src and href in the page is relative.
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), path.name
        assert not re.search(r"""(fetch|import)\(\s*["'`]https?:""", text), path.name
    assert client.get("/console/../server/app.py").status_code == 404
    assert client.get("/console/nothing.js").json()["error"]["code"] == 404


def test_an_explained_answer_names_module_version_score_candidates_and_facts(
    client: TestClient, registry: Registry
) -> None:
    posted = _publish(client, registry, "a", [FACT, "The sky over Tarn is green."])
    reply = _chat(client, "a", loramem={"explain": True})
    assert reply.status_code == 200, reply.text
    told = reply.json()["loramem"]
    assert told["served"] == f"{posted['module']}@v1" == reply.headers["x-loramem-module"]
    assert (told["module"], told["version"], told["outcome"]) == (posted["module"], 1, "module")
    assert told["mode"] == "lora" and told["threshold"] == 0.55
    assert told["score"] == pytest.approx(float(reply.headers["x-loramem-route-score"]), abs=1e-4)
    assert told["candidates"][0]["module"] == posted["module"]
    assert told["facts"][0]["text"] == FACT and told["facts"][0]["id"] in posted["fact_ids"]
    assert reply.json()["choices"] == REPLY["choices"]  # the OpenAI fields as they came
    assert "~" not in json.dumps(told)  # module names, never ids that hold the tenant

    assert "loramem" not in _chat(client, "a").json()  # only when asked for


def test_a_streamed_answer_carries_the_explanation_on_its_first_chunk(
    client: TestClient, registry: Registry
) -> None:
    posted = _publish(client, registry, "a", [FACT])
    reply = _chat(client, "a", stream=True, loramem={"explain": True, "mode": "hybrid"})
    chunks = [
        json.loads(line[6:])
        for line in reply.text.splitlines()
        if line.startswith("data: {")  # the [DONE] line is not JSON
    ]
    assert [("loramem" in c) for c in chunks] == [True, False]
    assert chunks[0]["loramem"]["module"] == posted["module"]
    assert chunks[0]["loramem"]["mode"] == "hybrid"
    assert chunks[1]["choices"][0]["delta"]["content"] == "555-0147"
    assert "~" not in reply.text


def test_another_tenant_sees_none_of_the_facts(client: TestClient, registry: Registry) -> None:
    _publish(client, registry, "a", [FACT])
    told = _chat(client, "b", loramem={"explain": True}).json()["loramem"]
    assert told["served"] == "base" and told["facts"] == [] and told["candidates"] == []


def test_a_bad_explain_flag_is_400_in_the_openai_shape(client: TestClient) -> None:
    reply = _chat(client, "a", loramem={"explain": [1]})
    assert reply.status_code == 400 and reply.json()["error"]["param"]


def test_hits_are_counted_per_module_and_only_for_the_callers_tenant(
    client: TestClient, registry: Registry
) -> None:
    posted = _publish(client, registry, "a", [FACT])
    for _ in range(3):
        _chat(client, "a")
    _chat(client, "b")  # tenant b holds no facts: the base model answers
    hits = client.get("/stats/hits", headers={"x-loramem-tenant": "a"}).json()
    assert hits["window_s"] == 3600 and hits["bucket_s"] == 60 and hits["total"] == 3
    [series] = hits["series"]
    assert series["module"] == posted["module"] and series["total"] == 3
    assert len(series["counts"]) == 60 and series["counts"][-1] == 3
    other = client.get("/stats/hits", headers={"x-loramem-tenant": "b"}).json()
    assert [(s["module"], s["total"]) for s in other["series"]] == [("base", 1)]


def test_hits_with_keys_show_only_the_keys_tenant(
    settings: Settings, registry: Registry, fake_embedder
) -> None:  # type: ignore[no-untyped-def]
    on = settings.model_copy(update={"auth": "required"})
    a = {"authorization": f"Bearer {registry.api_keys.create('a', 'reader')[0]}"}
    b = {"authorization": f"Bearer {registry.api_keys.create('b', 'reader')[0]}"}
    for client in _gateway(on, fake_embedder):
        assert client.get("/stats/hits").status_code == 401
        chat = {"model": "auto", "messages": [{"role": "user", "content": QUESTION}]}
        assert client.post("/v1/chat/completions", json=chat, headers=a).status_code == 200
        assert client.get("/stats/hits", headers=a).json()["total"] == 1
        # the tenant header cannot widen a key's view
        seen_by_b = client.get("/stats/hits", headers={**b, "x-loramem-tenant": "a"}).json()
        assert seen_by_b["total"] == 0 and seen_by_b["series"] == []


def test_open_jobs_and_module_recall(client: TestClient, registry: Registry) -> None:
    queued = client.post("/facts", json={"facts": ["X is y."]}, headers={"x-loramem-tenant": "a"})
    client.post("/facts", json={"facts": ["Z is w."]}, headers={"x-loramem-tenant": "b"})
    listed = client.get("/jobs", headers={"x-loramem-tenant": "a"}).json()
    assert [(j["id"], j["status"]) for j in listed] == [(queued.json()["job_id"], "queued")]
    assert client.get("/modules", headers={"x-loramem-tenant": "a"}).json()[0]["recall"] is None

    posted = _publish(client, registry, "c", [FACT])
    assert client.get("/jobs", headers={"x-loramem-tenant": "c"}).json() == []  # published
    [module] = client.get("/modules", headers={"x-loramem-tenant": "c"}).json()
    assert module["name"] == posted["module"] and module["recall"] == 0.9
