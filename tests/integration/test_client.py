"""loramem/client.py against the real gateway app (FastAPI's TestClient) on real Redis: every
call it offers reaches its route, and a refusal comes back as a GatewayError."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from cli.main import main
from loramem.client import Client, GatewayError
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from server.app import create_app
from tests.recipes import NO_FILES, TRAINED


@pytest.fixture
def client(settings: Settings, registry: Registry, fake_embedder) -> Iterator[Client]:
    with TestClient(create_app(settings, embedder=fake_embedder)) as http:
        yield Client("http://testserver", tenant="acme", max_retries=0, http=http)


def test_facts_can_be_added_listed_edited_and_deleted(client: Client) -> None:
    added = client.add_facts(["The colour of X is red.", {"text": "Y is blue.", "id": "y1"}])
    assert "y1" in added["fact_ids"] and client.job(added["job_id"])["status"] == "queued"
    document = client.add_document(
        "The capital of Zembla is Onhava. The river of Zembla is the Grey.", module=added["module"]
    )
    texts = {f["id"]: f["text"] for f in client.facts()}
    assert len(texts) == 4 and texts["y1"] == "Y is blue."
    edited = client.edit_fact("y1", "Y is yellow.")
    assert client.job(edited["job_id"])["module"] == added["module"]
    assert "Y is yellow." in {f["text"] for f in client.facts()}
    client.delete_fact(document["fact_ids"][0])
    assert len(client.facts()) == 3
    assert [m["name"] for m in client.modules()] == [added["module"]]


def test_the_tenant_header_and_the_key_travel_with_every_call(
    settings: Settings, fake_embedder
) -> None:
    with TestClient(create_app(settings, embedder=fake_embedder)) as http:
        acme = Client("http://testserver", tenant="acme", http=http)
        other = Client("http://testserver", tenant="other", http=http)
        acme.add_facts(["A secret of acme."])
        assert other.facts() == [] and len(acme.facts()) == 1
        assert Client("http://t", api_key="lm-k", http=http).headers["authorization"] == (
            "Bearer lm-k"
        )


def test_a_refusal_is_a_gateway_error_and_stores_nothing(
    client: Client, redis_client: redis.Redis
) -> None:
    before = redis_client.dbsize()
    with pytest.raises(GatewayError) as refused:
        client.add_facts([])
    assert refused.value.status == 400 and refused.value.message
    with pytest.raises(GatewayError) as missing:
        client.job("no-such-job")
    assert missing.value.status == 404
    with pytest.raises(GatewayError) as no_module:
        client.merge(["m-none", "m-other"])
    assert no_module.value.status in (400, 404)
    assert redis_client.dbsize() == before
    assert client.merges() == []


def test_wait_job_follows_a_job_until_it_is_published(client: Client, registry: Registry) -> None:
    added = client.add_facts(["The colour of X is red."])
    registry.jobs.skip_to_publishing(added["job_id"], {"note": "published by hand"})
    registry.modules.publish(
        VersionInfo(
            module_id("acme", added["module"]), 1, "acme", added["fact_ids"], 1.0, NO_FILES, TRAINED
        ),
        {},
        job_id=added["job_id"],
    )
    seen: list[str] = []
    job = client.wait_job(added["job_id"], on_progress=lambda j: seen.append(j["status"]))
    assert job["status"] == "published" and job["version"] == 1 and seen == ["published"]
    assert client.modules()[0]["active_version"] == 1


def test_chat_goes_through_the_openai_package_and_refusals_keep_their_status(
    client: Client,
) -> None:
    with pytest.raises(GatewayError) as unknown:
        client.ask("Who?", model="m-nothing-here")
    assert unknown.value.status == 404 and unknown.value.type == "model_not_found"
    with pytest.raises(GatewayError) as no_engine:  # nothing listens at the engine's URL
        client.ask("What is the capital of France?", model="SmolLM2-135M-Instruct")
    assert no_engine.value.status == 503


def test_loramem_add_and_job_speak_through_the_client(
    settings: Settings,
    registry: Registry,
    fake_embedder,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with TestClient(create_app(settings, embedder=fake_embedder)) as http:

        def through_the_app(cls, _settings, _url=None, **options):  # type: ignore[no-untyped-def]
            return Client("http://testserver", tenant=options["tenant"], http=http)

        monkeypatch.setattr(Client, "from_settings", classmethod(through_the_app))
        assert main(["add", "--no-follow", "--tenant", "cli", "The colour of X is red."]) == 0
        job_id = capsys.readouterr().out.split()[1]
        assert [f.text for f in registry.facts.of_tenant("cli")] == ["The colour of X is red."]
        registry.jobs.fail(job_id, "no engine in this test")
        assert main(["job", "--tenant", "cli", job_id]) == 1
        assert capsys.readouterr().out.splitlines()[-1].endswith("no engine in this test")
        assert main(["add", "--tenant", "cli", " "]) == 1  # refused: the gateway's message
        assert capsys.readouterr().err.strip()
        assert len(registry.facts.of_tenant("cli")) == 1


def test_a_cancelled_job_ends_the_wait(client: Client) -> None:
    added = client.add_facts(["The colour of X is red."])
    assert client.cancel_job(added["job_id"])["status"] == "cancelled"
    assert client.wait_job(added["job_id"])["status"] == "cancelled"
    assert len(client.facts()) == 1  # its facts stay
