"""`loramem eval phonebook-scale` against a fake gateway (httpx MockTransport) on generated
PhoneBook rows: two batches, the first module published at once and the second after a
few polls (or never). What is asked when, what is sampled, and what the wait reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx
import pytest

from evaluation.cli import add_parser
from evaluation.phonebook_scale import paraphrased, phonebook_scale
from evaluation.run import EvalRun
from loramem.datasets import PhoneEntry, phonebook
from loramem.settings import Settings


class FakeGateway:
    """Batch 0 goes to m-a, published from the first poll; batch 1 to m-b, published once
    its job has been polled `polls_to_publish` times (None: never). A question is answered
    with the number of the person it names: by the module when published, else from
    context (`pending`), as the real gateway's read-your-writes does."""

    def __init__(self, people: list[PhoneEntry], polls_to_publish: int | None) -> None:
        self.people, self.polls_to_publish = people, polls_to_publish
        self.holders: dict[str, str] = {}
        self.second_polls = 0
        self.asked: list[tuple[str, bool]] = []  # (question, batch 1 published then)
        self.modes: list[str | None] = []  # the mode each question named

    def published(self, module: str) -> bool:
        return module == "m-a" or (
            self.polls_to_publish is not None and self.second_polls >= self.polls_to_publish
        )

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/facts" and request.method == "POST":
            module = "m-b" if self.holders else "m-a"
            self.holders |= {fact: module for fact in json.loads(request.content)["facts"]}
            reply = {"job_id": "j-" + module, "fact_ids": [], "module": module}
            return httpx.Response(202, json=reply)
        if path == "/facts":
            return httpx.Response(
                200, json=[{"text": t, "module": m} for t, m in self.holders.items()]
            )
        if path.startswith("/jobs/"):
            module = path.removeprefix("/jobs/j-")
            self.second_polls += module == "m-b"
            status = "published" if self.published(module) else "training"
            job = {"id": path[6:], "status": status, "module": module, "progress": {"step": 3}}
            return httpx.Response(200, json=job)
        if path == "/modules":
            modules = [{"name": m, "fact_count": 2, "recall": 1.0,
                        "active_version": 1 if self.published(m) else None}
                       for m in ("m-a", "m-b")]  # fmt: skip
            return httpx.Response(200, json=modules)
        body = json.loads(request.content)
        question = body["messages"][-1]["content"]
        self.modes.append(body.get("loramem", {}).get("mode"))
        self.asked.append((question, self.published("m-b")))
        person = next(p for p in self.people if p.name.split()[-1] in question)
        module = self.holders[person.fact]
        headers = (
            {"x-loramem-module": module + "@v1", "x-loramem-outcome": "module"}
            if self.published(module)
            else {"x-loramem-module": "base", "x-loramem-outcome": "pending"}
        )
        reply = {"choices": [{"message": {"content": f"It is {person.phone}."}}]}
        return httpx.Response(200, json=reply, headers=headers)


def run_for(
    tmp_path: Path, argv: list[str], polls_to_publish: int | None
) -> tuple[EvalRun, FakeGateway]:
    settings = Settings(data_dir=tmp_path / "no-data")  # generated PhoneBook rows
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), settings)
    args = parser.parse_args(["eval", "phonebook-scale", "--count", "4", "--batch", "2", *argv])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "experiment", "out")}
    gateway = FakeGateway(phonebook(settings.data_dir, 4), polls_to_publish)
    run = EvalRun("phonebook-scale", "http://gw", tmp_path, settings, flags, concurrency=2)
    run.transport = httpx.MockTransport(gateway)
    return run, gateway


@pytest.fixture(autouse=True)
def _no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("evaluation.client.time.sleep", lambda _s: None)


def test_asked_while_training_each_fact_once_its_module_is_published(tmp_path: Path) -> None:
    run, gateway = run_for(tmp_path, ["--ask-while-training"], polls_to_publish=3)
    results = phonebook_scale(run)["results"]
    first_batch = {p.name for p in gateway.people[:2]}
    for question, second_published in gateway.asked:
        in_first = any(name.split()[-1] in question for name in first_batch)
        assert in_first or second_published, question  # never asked before its module is
    assert not all(published for _q, published in gateway.asked)  # m-a's asked meanwhile
    assert len(gateway.asked) == 4 * 6  # each fact once: stored + five paraphrases
    ingest = results["ingest"]
    assert ingest["all_published"] and ingest["facts_published"] == 4
    assert ingest["asked_while_training"]
    assert [b["finished_s"] is not None for b in ingest["batches"]] == [True, True]
    stored, paraphrase = results["kinds"]
    assert stored["exact_match"] == paraphrase["exact_match"] == 1.0
    assert stored["answered_pending"] == 0.0 and stored["router_top1"] == 1.0


def test_without_the_flag_nothing_is_asked_until_all_is_published(tmp_path: Path) -> None:
    run, gateway = run_for(tmp_path, [], polls_to_publish=3)
    results = phonebook_scale(run)["results"]
    assert all(published for _q, published in gateway.asked)
    assert not results["ingest"]["asked_while_training"]


def test_a_wait_that_runs_out_asks_the_rest_from_context(tmp_path: Path) -> None:
    run, gateway = run_for(tmp_path, ["--wait-s", "0.3"], polls_to_publish=None)
    results = phonebook_scale(run)["results"]
    ingest = results["ingest"]
    assert not ingest["all_published"] and ingest["facts_published"] == 2
    assert [b["finished_s"] is None for b in ingest["batches"]] == [False, True]
    assert [b["job"]["status"] for b in ingest["batches"]] == ["published", "training"]
    stored = results["kinds"][0]
    assert stored["questions"] == 4 and stored["answered_pending"] == 0.5


def test_the_paraphrase_share_is_drawn_by_fact_and_asks_five_per_fact(tmp_path: Path) -> None:
    people = phonebook(tmp_path / "no-data", 200)
    half = paraphrased(people, 0.5)
    assert paraphrased(people, 1.0) == {p.fact for p in people} and not paraphrased(people, 0)
    assert 60 < len(half) < 140 and half == paraphrased(list(reversed(people)), 0.5)
    assert paraphrased(people[:50], 0.5) == half & {p.fact for p in people[:50]}
    run, gateway = run_for(tmp_path, ["--paraphrases", "0.5"], polls_to_publish=0)
    results = phonebook_scale(run)["results"]
    stored, paraphrase = results["kinds"]
    assert stored["questions"] == 4
    assert paraphrase["questions"] == 5 * results["paraphrased_facts"]
    assert len(gateway.asked) == 4 + 5 * results["paraphrased_facts"]


def test_each_mode_asks_every_question_and_is_scored_apart(tmp_path: Path) -> None:
    run, gateway = run_for(tmp_path, ["--modes", "auto,hybrid"], polls_to_publish=0)
    results = phonebook_scale(run)["results"]
    assert len(gateway.asked) == 2 * 4 * 6  # each question once per mode
    assert [(k["mode"], k["kind"]) for k in results["kinds"]] == [
        ("auto", "stored"), ("auto", "paraphrase"), ("hybrid", "stored"), ("hybrid", "paraphrase")
    ]  # fmt: skip
    assert all(k["questions"] in (4, 20) for k in results["kinds"])
    assert sorted(gateway.modes, key=str) == [None] * 24 + ["hybrid"] * 24  # auto names none
    bad, _gateway = run_for(tmp_path, ["--modes", "auto,lorra"], polls_to_publish=0)
    with pytest.raises(ValueError, match="lorra"):
        phonebook_scale(bad)
