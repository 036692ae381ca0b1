"""The eval client's requests carry the key of `LORAMEM_API_KEY`, as `loramem add` does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from evaluation.client import EvalClient
from evaluation.run import EvalRun
from loramem.settings import Settings


def recording_client(api_key: str | None) -> tuple[EvalClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/facts":
            return httpx.Response(202, json={"job_id": "j1", "fact_ids": ["f1"], "module": "m"})
        reply = {"choices": [{"message": {"content": "Paris"}}]}
        return httpx.Response(200, json=reply, headers={"x-loramem-module": "base"})

    client = EvalClient("http://gw", "t1", api_key=api_key, transport=httpx.MockTransport(answer))
    return client, seen


def test_a_set_api_key_is_sent_as_a_bearer_on_every_request() -> None:
    client, seen = recording_client("lm-secret")
    client.post_facts(["X is y."], module=None)
    assert client.chat("Where?", model="auto").text == "Paris"
    assert [r.headers["authorization"] for r in seen] == ["Bearer lm-secret"] * 2
    assert all(r.headers["x-loramem-tenant"] == "t1" for r in seen)  # for a gateway with keys off


def test_no_api_key_sends_no_authorization() -> None:
    client, seen = recording_client(None)
    client.post_facts(["X is y."], module=None)
    assert "authorization" not in seen[0].headers


@pytest.mark.parametrize("api_key", ["lm-from-settings", None])
def test_eval_runs_take_the_key_from_the_settings(tmp_path: Path, api_key: str | None) -> None:
    run = EvalRun(
        experiment="capacity",
        gateway="http://gw",
        out=tmp_path,
        settings=Settings(api_key=api_key),
        flags={},
    )
    headers = run.client("a").api.headers
    assert headers.get("authorization") == (f"Bearer {api_key}" if api_key else None)


def test_a_continuation_is_scored_from_vllms_prompt_logprobs_through_the_openai_client() -> None:
    seen: list[dict] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        tokens = [{"1": {"logprob": -0.5, "decoded_token": " Par"}}]
        tokens.append({"2": {"logprob": -0.25, "decoded_token": "is"}})
        reply = {"choices": [{"message": {"content": ""}}], "prompt_logprobs": [None, *tokens]}
        return httpx.Response(200, json=reply, headers={"x-loramem-module": "m@v1"})

    client = EvalClient("http://gw", "t1", transport=httpx.MockTransport(answer))
    score = client.continuation_logprob("Capital?", "It is", "Paris", model="m", mode="rag")
    assert score == -0.75
    [body] = seen
    assert body["prompt_logprobs"] == 0 and body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False and body["loramem"] == {"mode": "rag"}
    assert body["messages"][-1] == {"role": "assistant", "content": "It is Paris"}


def test_a_refused_chat_is_an_answer_with_the_gateways_message() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        error = {"message": "no such model", "type": "model_not_found", "param": None}
        return httpx.Response(404, json={"error": {**error, "code": 404}})

    client = EvalClient("http://gw", "t1", transport=httpx.MockTransport(refuse))
    assert client.chat("Where?", model="m-x").error == "no such model"


def test_following_jobs_outlasts_a_gateway_restart_but_not_a_long_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run of hours must not end on one refused poll (`loramem run` restarts a gateway),
    nor wait forever on a gateway that is gone."""
    polls: list[str] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        polls.append(request.url.path)
        if len(polls) <= 2:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200, json={"id": "j1", "status": "published", "module": "m"})

    monkeypatch.setattr("evaluation.client.time.sleep", lambda _s: None)
    client = EvalClient("http://gw", "t1", transport=httpx.MockTransport(gateway))
    finished: list[str] = []
    (job,) = client.wait_jobs(["j1"], "test", on_finished=lambda j: finished.append(j["id"]))
    assert job["status"] == "published" and finished == ["j1"] and len(polls) == 3

    monkeypatch.setattr("evaluation.client.UNREACHABLE_S", 0.0)
    polls.clear()
    with pytest.raises(httpx.ConnectError):
        client.wait_jobs(["j1"], "test")


def test_facts_are_posted_in_batches_in_order_each_seen_before_the_next() -> None:
    """The evals' one batch poster (phonebook-scale, counterfact, ingest-held's fill)."""
    events: list[str] = []
    posted: list[dict] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        posted.append(body)
        job_id = f"j{len(posted)}"
        events.append(f"post {job_id}")
        return httpx.Response(202, json={"job_id": job_id, "fact_ids": [], "module": "m-d1"})

    client = EvalClient("http://gw", "t1", transport=httpx.MockTransport(gateway))
    facts = [f"fact {i}" for i in range(7)]
    batches = client.post_batches(
        facts, 3, {"max_steps": 5}, after_each=lambda b: events.append(f"saw {b['job_id']}")
    )
    assert [b["facts"] for b in batches] == [3, 3, 1]
    assert [b["batch"] for b in batches] == [0, 1, 2]
    assert [b["job_id"] for b in batches] == ["j1", "j2", "j3"]
    assert all(b["module"] == "m-d1" and b["posted_s"] >= 0 for b in batches)
    assert [f for body in posted for f in body["facts"]] == facts
    assert all(body.get("module") is None for body in posted)
    assert all(body["training"] == {"max_steps": 5} for body in posted)
    assert events == ["post j1", "saw j1", "post j2", "saw j2", "post j3", "saw j3"]
    assert client.post_batches([], 3) == []
