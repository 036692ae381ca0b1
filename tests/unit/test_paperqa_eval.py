"""`loramem eval paperqa` against a fake gateway (httpx MockTransport), on the generated
stand-in papers: what it posts per run, what it asks, and how runs are summed up. The
fake's modules answer a question with its reference in the first run's tenant and with
an unrelated sentence in the second's, so each figure and its spread are known."""

from __future__ import annotations

import argparse
import json
import zlib
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from evaluation import data_evals
from evaluation.cli import add_parser
from evaluation.data_evals import paperqa_eval
from evaluation.judge import Judge
from evaluation.run import EvalRun
from loramem.datasets import paperqa
from loramem.settings import Settings

UNRELATED = "Bananas are yellow."


class WordsEmbedder:
    """Bag of words, hashed: sentences that share words are near (no model loaded)."""

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 512))
        for row, text in enumerate(texts):
            for word in text.lower().strip("?.").split():
                vectors[row, zlib.crc32(word.encode()) % 512] += 1
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(autouse=True)
def _words_embedder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_evals, "query_embedder", lambda settings: WordsEmbedder())


class FakeGateway:
    def __init__(self, references: dict[str, str]) -> None:
        self.references = references
        self.documents: list[tuple[str, dict[str, Any]]] = []  # (tenant, training knobs)
        self.judged = 0
        self.options: list[dict[str, Any] | None] = []  # each question's `loramem` options

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, tenant = request.url.path, request.headers.get("x-loramem-tenant", "judge")
        if path == "/documents":
            self.documents.append((tenant, _body(request)["training"]))
            reply = {"job_id": f"j{len(self.documents)}", "fact_ids": [], "module": "m"}
            return httpx.Response(202, json=reply)
        if path.startswith("/jobs/"):
            job = {"id": path[6:], "kind": "add", "status": "published", "module": "m",
                   "version": 1, "progress": {"recall": 1.0, "step": 9}, "error": None}  # fmt: skip
            return httpx.Response(200, json=job)
        if path == "/modules":
            return httpx.Response(200, json=[{"name": "m", "fact_count": 4, "active_version": 1}])
        body = _body(request)
        if "response_format" in body:
            self.judged += 1
            verdict = json.dumps({"score": 5, "explanation": "fine"})
            return httpx.Response(200, json={"choices": [{"message": {"content": verdict}}]})
        question = body["messages"][-1]["content"]
        self.options.append(body.get("loramem"))
        right = body["model"] == "auto" and tenant.endswith("-run0-" + tenant.split("-")[-1])
        content = self.references[question] if right else UNRELATED
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})


def _body(request: httpx.Request) -> dict[str, Any]:
    return dict(json.loads(request.content))


def run_for(tmp_path: Path, argv: list[str]) -> tuple[EvalRun, FakeGateway]:
    settings = Settings(data_dir=tmp_path / "no-data")  # the generated stand-ins
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"), settings)
    args = parser.parse_args(["eval", "paperqa", *argv])
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "experiment", "out")}
    references = {qa.question: qa.answer for n in (0, 1) for qa in paperqa(settings.data_dir, n).qa}
    gateway = FakeGateway(references)
    run = EvalRun("paperqa", "http://gw", tmp_path, settings, flags, concurrency=2)
    run.transport = httpx.MockTransport(gateway)
    return run, gateway


def test_two_runs_post_every_paper_with_their_own_seed_and_report_the_spread(
    tmp_path: Path,
) -> None:
    run, gateway = run_for(
        tmp_path, ["--papers", "0,1", "--runs", "2", "--arms", "base,lora", "--no-judge"]
    )
    outcome = paperqa_eval(run)
    results = outcome["results"]
    tenants = sorted({tenant for tenant, _ in gateway.documents})
    assert len(gateway.documents) == 4 and len(tenants) == 2
    assert sorted(knobs["seed"] for _, knobs in gateway.documents) == [0, 0, 1, 1]
    assert gateway.judged == 0 and results["judge"] is None
    questions = sum(len(paperqa(tmp_path / "no-data", n).qa) for n in (0, 1))
    base, lora = results["arms"]
    assert base["questions"] == lora["questions"] == questions  # --questions 0: all
    assert base["runs"] == lora["runs"] == 2
    assert base["rouge_l_spread"] == 0.0 and base["bleu_spread"] == 0.0
    first, second = (r["arms"][1] for r in results["runs"])
    assert first["rouge_l"] == 1.0 and second["rouge_l"] < 0.2
    assert lora["rouge_l"] == (first["rouge_l"] + second["rouge_l"]) / 2
    assert lora["rouge_l_spread"] == first["rouge_l"] - second["rouge_l"]
    assert lora["bleu_spread"] > 50
    assert len(results["jobs"]) == 4
    axes = outcome["figures"]["paperqa"].axes[0]  # each arm's mean, its runs' min-max
    assert axes.get_ylabel() == "ROUGE-L"
    (errorbars,) = [c for c in axes.containers if isinstance(c, ErrorbarContainer)]
    (whiskers,) = errorbars.lines[2]
    drawn = [y for low, high in whiskers.get_segments() for y in (low[1], high[1])]
    lows_highs = [base["rouge_l"], base["rouge_l"], second["rouge_l"], first["rouge_l"]]
    assert drawn == pytest.approx(lows_highs)


def test_one_run_with_the_judge_keeps_the_default_seed_and_counts_questions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, gateway = run_for(tmp_path, ["--papers", "0", "--questions", "2", "--arms", "lora"])
    judge = Judge("http://gw", "base", own_engine=True)
    judge.http = httpx.Client(base_url="http://gw", transport=run.transport)
    monkeypatch.setattr(Judge, "from_settings", lambda *_: judge)
    results = paperqa_eval(run)["results"]
    assert [knobs["seed"] for _, knobs in gateway.documents] == [run.settings.training.seed]
    (lora,) = results["arms"]
    assert lora["questions"] == 2 and lora["judge_score"] == 5.0 and gateway.judged == 2
    assert lora["rouge_l_spread"] == 0.0  # one run


def test_answers_no_model_writes_are_scored_beside_the_arms(tmp_path: Path) -> None:
    # The stand-in papers' references are their own sentences ("The phone number of X is
    # N."), and each question shares its person's name with one sentence only.
    run, _ = run_for(tmp_path, ["--papers", "0,1", "--arms", "base", "--no-judge"])
    outcome = paperqa_eval(run)
    echo, nearest, best = outcome["results"]["references"]
    assert echo["reference"] == "the question itself" and 0 < echo["rouge_l"] < 1
    assert nearest["rouge_l"] == best["rouge_l"] == 1.0
    assert "| the sentence nearest the question | 100.000 | 1.000 |" in outcome["report"]


def test_an_arm_may_name_its_own_context_threshold(tmp_path: Path) -> None:
    run, gateway = run_for(
        tmp_path, ["--papers", "0", "--questions", "2", "--arms", "rag,rag@0.45", "--no-judge"]
    )
    results = paperqa_eval(run)["results"]
    assert [a["arm"] for a in results["arms"]] == ["rag", "rag@0.45"]
    assert (
        gateway.options == [{"mode": "rag"}] * 2 + [{"mode": "rag", "context_threshold": 0.45}] * 2
    )


def test_the_auto_arm_names_no_mode_so_the_gateway_chooses(tmp_path: Path) -> None:
    run, gateway = run_for(
        tmp_path, ["--papers", "0", "--questions", "2", "--arms", "hybrid,auto", "--no-judge"]
    )
    results = paperqa_eval(run)["results"]
    assert [a["arm"] for a in results["arms"]] == ["hybrid", "auto"]
    assert gateway.options == [{"mode": "hybrid"}] * 2 + [None] * 2
