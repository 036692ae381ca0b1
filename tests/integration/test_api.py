"""The gateway's HTTP contract with a fake embedder, real Redis and no engine."""

import gc
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED
from tests.services import single_and_cluster  # noqa: F401  (each test on both)


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[TestClient]:
    settings = settings.model_copy(update={"max_facts_per_request": 5, "max_fact_chars": 100})
    with TestClient(create_app(settings, embedder=fake_embedder)) as test_client:
        yield test_client


def assert_openai_error(response, status: int) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]


def test_post_facts_accepts_and_reports_the_job(client: TestClient) -> None:
    reply = client.post(
        "/facts", json={"facts": ["The colour of X is red.", {"text": "Y", "id": "y1"}]}
    )
    assert reply.status_code == 202
    body = reply.json()
    assert len(body["fact_ids"]) == 2 and "y1" in body["fact_ids"]
    job = client.get(f"/jobs/{body['job_id']}").json()
    assert job["status"] == "queued" and job["module"] == body["module"]
    assert {f["id"] for f in client.get("/facts").json()} == set(body["fact_ids"])
    assert client.get("/modules").json()[0]["active_version"] is None


BAD_FACT_BODIES = [
    ({"facts": []}, 400),
    ({"facts": [42]}, 400),
    ({"facts": [{"text": 1}]}, 400),
    ({"facts": ["x" * 101]}, 400),
    ({"facts": ["a", "b", "c", "d", "e", "f"]}, 400),
    ({"facts": ["  "]}, 400),
    ({"facts": ["a"], "module": "Not A Name!"}, 400),
    ({"fact": ["a"]}, 400),
]


@pytest.mark.parametrize(("body", "status"), BAD_FACT_BODIES)
def test_bad_facts_are_rejected_and_nothing_is_stored(
    client: TestClient, registry: Registry, redis_client: redis.Redis, body: dict, status: int
) -> None:
    before = redis_client.dbsize()
    assert_openai_error(client.post("/facts", json=body), status)
    assert redis_client.dbsize() == before


def test_malformed_json_is_rejected(
    client: TestClient, registry: Registry, redis_client: redis.Redis
) -> None:
    before = redis_client.dbsize()
    reply = client.post(
        "/facts", content=b'{"facts": [', headers={"content-type": "application/json"}
    )
    assert_openai_error(reply, 400)
    assert_openai_error(
        client.post(
            "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
        ),
        400,
    )
    assert redis_client.dbsize() == before


def test_unknown_model_is_404(client: TestClient) -> None:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "no-such-module", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert_openai_error(reply, 404)
    assert reply.json()["error"]["param"] == "model"


def test_missing_messages_is_400(client: TestClient) -> None:
    assert_openai_error(client.post("/v1/chat/completions", json={"model": "auto"}), 400)
    assert_openai_error(
        client.post("/v1/chat/completions", json={"model": "auto", "messages": []}), 400
    )


def test_other_tenants_see_nothing(client: TestClient, registry: Registry) -> None:
    reply = client.post("/facts", json={"facts": ["secret"]}, headers={"x-loramem-tenant": "a"})
    job_id = reply.json()["job_id"]
    b = {"x-loramem-tenant": "b"}
    assert client.get("/facts", headers=b).json() == []
    assert client.get("/modules", headers=b).json() == []
    assert_openai_error(client.get(f"/jobs/{job_id}", headers=b), 404)


def test_published_module_is_listed_and_foreign_names_are_404(
    client: TestClient, registry: Registry
) -> None:
    body = client.post(
        "/facts", json={"facts": ["secret"]}, headers={"x-loramem-tenant": "a"}
    ).json()
    registry.modules.publish(
        VersionInfo(
            module_id("a", body["module"]), 1, "a", body["fact_ids"], 1.0, NO_FILES, TRAINED
        ),
        {},
    )
    name = f"{body['module']}@v1"
    deadline_models = []
    for _ in range(50):  # the event follower applies the publish asynchronously
        deadline_models = [
            m["id"]
            for m in client.get("/v1/models", headers={"x-loramem-tenant": "a"}).json()["data"]
        ]
        if body["module"] in deadline_models:
            break
        import time

        time.sleep(0.05)
    assert body["module"] in deadline_models
    b_models = [
        m["id"] for m in client.get("/v1/models", headers={"x-loramem-tenant": "b"}).json()["data"]
    ]
    assert body["module"] not in b_models
    for model in (body["module"], name):
        reply = client.post(
            "/v1/chat/completions",
            headers={"x-loramem-tenant": "b"},
            json={"model": model, "messages": [{"role": "user", "content": "secret"}]},
        )
        assert_openai_error(reply, 404)


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert_openai_error(client.get("/readyz"), 503)  # no engine in this test
    assert "loramem_requests_total" in client.get("/metrics").text


def test_put_and_delete_queue_a_retrain_of_the_facts_module(
    client: TestClient, registry: Registry
) -> None:
    body = client.post(
        "/facts", json={"facts": [{"text": "Lenta.ru is written in Russian", "id": "l1"}]}
    ).json()
    put = client.put("/facts/l1", json={"text": "Lenta.ru is written in Italian"})
    assert put.status_code == 202 and put.json()["module"] == body["module"]
    assert registry.facts.get("default", "l1").text == "Lenta.ru is written in Italian"
    assert client.get(f"/jobs/{put.json()['job_id']}").json()["status"] == "queued"

    deleted = client.delete("/facts/l1")
    assert deleted.status_code == 202 and deleted.json()["module"] == body["module"]
    assert client.get("/facts").json() == []
    assert registry.modules.get(module_id("default", body["module"])).fact_count == 0


def test_edits_of_missing_or_foreign_facts_are_404_and_change_nothing(
    client: TestClient, registry: Registry, redis_client: redis.Redis
) -> None:
    client.post(
        "/facts", json={"facts": [{"text": "mine", "id": "a1"}]}, headers={"x-loramem-tenant": "a"}
    )
    before = redis_client.dbsize()
    b = {"x-loramem-tenant": "b"}
    assert_openai_error(client.put("/facts/a1", json={"text": "x"}, headers=b), 404)
    assert_openai_error(client.delete("/facts/a1", headers=b), 404)
    assert_openai_error(
        client.put("/facts/a1", json={"text": ""}, headers={"x-loramem-tenant": "a"}), 400
    )
    assert_openai_error(
        client.put("/facts/a1", json={"txt": "x"}, headers={"x-loramem-tenant": "a"}), 400
    )
    assert redis_client.dbsize() == before
    assert registry.facts.get("a", "a1").text == "mine"


def test_training_knobs_travel_with_the_job(client: TestClient, registry: Registry) -> None:
    body = {"facts": ["a fact"], "training": {"rank": 4, "data_format": "mixed"}}
    reply = client.post("/facts", json=body)
    assert reply.status_code == 202
    assert registry.jobs.get(reply.json()["job_id"]).training == {
        "rank": 4,
        "data_format": "mixed",
    }


@pytest.mark.parametrize(
    "training",
    [
        {"rank": 0},
        {"variant": "ia3"},
        {"learning_rate": -1},
        {"unknown": 1},
        {"rank": 64},  # over the engine's max LoRA rank (8 by default)
        {"variant": "dora"},  # published at rank 2r = 16
    ],
)
def test_impossible_training_knobs_are_rejected(
    client: TestClient, registry: Registry, redis_client: redis.Redis, training: dict
) -> None:
    before = redis_client.dbsize()
    assert_openai_error(client.post("/facts", json={"facts": ["a"], "training": training}), 400)
    assert redis_client.dbsize() == before


def test_a_document_is_stored_as_sentence_facts(client: TestClient) -> None:
    text = "Planning with diffusion models is popular. They model trajectory distributions."
    reply = client.post("/documents", json={"text": text})
    assert reply.status_code == 202 and len(reply.json()["fact_ids"]) == 2
    assert [f["text"] for f in client.get("/facts").json()] != []
    assert_openai_error(client.post("/documents", json={"text": " "}), 400)
    too_many = " ".join(f"Sentence number {i} is here." for i in range(6))
    assert_openai_error(client.post("/documents", json={"text": too_many}), 400)


@pytest.mark.parametrize("freeze", [False, True])
def test_only_the_gateways_own_process_freezes_its_start_out_of_the_collector(
    settings: Settings, fake_embedder, freeze: bool
) -> None:
    gc.unfreeze()
    try:
        app = create_app(settings, embedder=fake_embedder, freeze_after_start=freeze)
        with TestClient(app) as http:
            assert http.get("/healthz").status_code == 200
            assert (gc.get_freeze_count() > 0) is freeze
    finally:
        gc.unfreeze()  # the rest of the test process collects as before
