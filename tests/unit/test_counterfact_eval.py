"""`loramem eval counterfact` end to end against a fake gateway (httpx MockTransport): the
batches it posts, what it asks each arm, and its figures, on the generated stand-in
edits. The fake's modules know exactly the edited subjects, so every figure is known."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from evaluation.cli import add_parser
from evaluation.client import EvalClient
from evaluation.counterfact import counterfact_eval
from evaluation.counterfact_relations import paraphrase
from evaluation.run import EvalRun
from loramem.datasets import counterfact_edits
from loramem.settings import Settings


class FakeGateway:
    """Modules that answer every edit, asked by its prompt or its paraphrase, with its new
    target; base answers "Basque" (one of the stand-ins' targets) and the router sends
    the rest to base."""

    def __init__(self, edits: list[Any]) -> None:
        self.targets = {e.prompt: e.target for e in edits}
        self.targets |= {paraphrase(e) or e.prompt: e.target for e in edits}
        self.facts: list[str] = []
        self.posts: list[list[str]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/facts" and request.method == "POST":
            texts = [f if isinstance(f, str) else f["text"] for f in _body(request)["facts"]]
            self.posts.append(texts)
            self.facts += texts
            reply = {"job_id": f"j{len(self.posts)}", "fact_ids": [], "module": "m"}
            return httpx.Response(202, json=reply)  # the gateway's PostFactsResponse
        if path == "/facts":
            return httpx.Response(
                200, json=[{"id": "f", "text": t, "module": "m"} for t in self.facts]
            )
        if path.startswith("/jobs/"):
            job = {"id": path[6:], "kind": "add", "status": "published", "module": "m",
                   "version": 1, "progress": {"recall": 1.0, "step": 9}, "error": None}  # fmt: skip
            return httpx.Response(200, json=job)
        if path == "/modules":
            return httpx.Response(200, json=[{"name": "m", "fact_count": 4, "active_version": 1}])
        return self.chat(_body(request))

    def chat(self, body: dict[str, Any]) -> httpx.Response:
        text = " ".join(m["content"] for m in body["messages"])
        asked = next((q for q in self.targets if q in text), None)
        routed = body["model"] == "auto" and asked is not None
        value = self.targets[asked] if routed and asked else "Basque"
        module = "m@v1" if routed else "base"
        if body.get("prompt_logprobs") == 0:
            candidate = text.rsplit(" ", 1)[1]
            token = {"1": {"logprob": -0.1 if candidate == value else -3.0,
                           "decoded_token": " " + candidate}}  # fmt: skip
            reply = {"choices": [{"message": {"content": ""}}], "prompt_logprobs": [None, token]}
        else:
            content = f" {value}." if body.get("continue_final_message") else f"It is {value}."
            reply = {"choices": [{"message": {"content": content}}]}
        return httpx.Response(200, json=reply, headers={"x-loramem-module": module})


def _body(request: httpx.Request) -> dict[str, Any]:
    return dict(json.loads(request.content))


def run_for(tmp_path: Path, argv: list[str]) -> tuple[EvalRun, FakeGateway]:
    import argparse

    settings = Settings(data_dir=tmp_path / "no-data")  # the generated stand-ins
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), settings)
    args = parser.parse_args(["eval", "counterfact", *argv])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "experiment", "out")}
    run = EvalRun("counterfact", "http://gw", tmp_path, settings, flags, concurrency=2)
    gateway = FakeGateway(counterfact_edits(settings.data_dir, 0))
    transport = httpx.MockTransport(gateway)
    run._clients[run.tenant()] = EvalClient("http://gw", run.tenant(), 2, transport=transport)
    return run, gateway


def test_the_eval_posts_in_batches_and_scores_every_part(tmp_path: Path) -> None:
    run, gateway = run_for(
        tmp_path, ["--count", "5", "--batch", "2", "--arms", "base,lora", "--locality", "3"]
    )
    outcome = counterfact_eval(run)
    results = outcome["results"]
    assert [len(p) for p in gateway.posts] == [2, 2, 1]
    assert results["ingest"]["batches"] == 3 and len(results["ingest"]["jobs"]) == 3
    base, lora = results["arms"]
    # "Basque" is the base model's own value: an edit to Basque is not scored.
    new_is_basque = sum(e.target == "Basque" for e in counterfact_edits(tmp_path, 5))
    assert base["efficacy"] == 0.0 and lora["efficacy"] == 1.0
    assert lora["efficacy_scored"] == 5 - new_is_basque
    assert lora["contains_target"] == 1.0 and lora["generalization"] == 1.0
    assert base["contains_target"] == base["generalization"] == new_is_basque / 5
    assert "locality" not in base
    local = lora["locality"]
    assert local["prompts"] == 3 and local["same_as_base"] == 1.0
    assert local["routed_to_base"] == 1.0 and local["routed_to_a_module"] == 0
    assert "| lora | 5 | 1.000 |" in outcome["report"]


def test_a_resumed_run_posts_only_the_facts_its_tenant_lacks(tmp_path: Path) -> None:
    run, gateway = run_for(tmp_path, ["--count", "3", "--arms", "lora"])
    gateway.facts = [e.sentence for e in counterfact_edits(tmp_path, 2)]
    results = counterfact_eval(run)["results"]
    assert len(gateway.posts) == 1 and len(gateway.posts[0]) == 1
    assert results["ingest"]["already_held"] == 2


def test_an_edit_whose_question_was_trained_is_left_out_of_unseen_generalization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The trainer's phrasings and the relation questions are disjoint (test_fact_forms.py);
    # make the first edit's question a trained one to see the eval count it apart.
    from evaluation import counterfact
    from loramem.fact_forms import fact_form

    first = counterfact_edits(tmp_path, 1)[0]
    real = counterfact.paraphrase
    trained_question = fact_form(first.sentence).questions(2)[1]
    monkeypatch.setattr(
        counterfact, "paraphrase", lambda e: trained_question if e == first else real(e)
    )
    run, _ = run_for(tmp_path, ["--count", "5", "--arms", "base,lora", "--questions-per-fact", "2"])
    lora = counterfact_eval(run)["results"]["arms"][1]
    assert lora["generalization_asked"] == 5
    assert lora["generalization_unseen_asked"] == 4
    assert lora["generalization_unseen"] == 1.0
