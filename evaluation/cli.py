"""`loramem eval <experiment>`: flags, then one run against a gateway."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loramem.datasets import COUNTERFACT_SIZES
from loramem.settings import Settings

EXPERIMENTS: dict[str, str] = {
    "capacity": "exact match against fact count for several ranks; capacity per parameter",
    "formats": "training data formats (qa, rewrite, mixed)",
    "variants": "LoRA variants (lora, dora, pissa)",
    "targets": "target modules (attention, feed-forward, all-linear)",
    "multi-module": "one big module vs several small: oracle, model=auto, merged",
    "phonebook": "PhoneBook through the system against base, ICL, RAG and hybrid",
    "phonebook-scale": "PhoneBook posted in batches, packed by the system: recall, routing, time",
    "counterfact": "CounterFact efficacy, generalization and locality, with the baselines",
    "paperqa": "PaperQA documents: BLEU, ROUGE-L and an LLM judge, with the baselines",
    "routing": "top-1 module accuracy among many look-alike PhoneBook modules (no gateway)",
    "subject": "the router's subject check off and on: CounterFact, PhoneBook, PaperQA",
    "read-your-writes": "time from POST/PUT to the first right answer; interim answers",
    "ingest-held": "POST -> published for a few facts into tenants already holding some",
    "span": "questions naming people of two modules: compose, merged, context, rag, oracle",
}
# Experiments whose jobs train with the system's own recipe: no training flags to offer.
_SYSTEM_RECIPE = ("ingest-held",)
_VALUES = {
    "formats": "qa,rewrite,mixed",
    "variants": "lora,dora,pissa",
    "targets": "attention,feed-forward,all-linear",
}


def add_parser(commands: Any, settings: Settings) -> None:
    """Register `eval` and its experiments on the main CLI's subparsers."""
    evaluate = commands.add_parser("eval", help="run an experiment through a running gateway")
    experiments = evaluate.add_subparsers(dest="experiment", required=True)
    for name, help_text in EXPERIMENTS.items():
        sub = experiments.add_parser(name, help=help_text, description=help_text)
        _common(sub, settings, trains=name not in _SYSTEM_RECIPE)
        _specific(sub, name, settings)
        if name == "counterfact":
            _counterfact(sub, settings)
        if name == "span":
            _span(sub)


def _common(sub: argparse.ArgumentParser, settings: Settings, trains: bool) -> None:
    gateway = f"http://{settings.gateway_host}:{settings.gateway_port}"
    sub.add_argument("--gateway", default=gateway, help=f"default: {gateway}")
    sub.add_argument("--out", type=Path, help="default: eval-results/<experiment>/")
    sub.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    sub.add_argument("--offset", type=int, default=0, help="first data row used")
    if not trains:
        return
    sub.add_argument("--max-steps", type=int, default=settings.training.max_steps)
    sub.add_argument("--top-layers", type=int, default=settings.training.top_layers)
    sub.add_argument("--targets", default=settings.training.targets)
    sub.add_argument(
        "--questions-per-fact",
        type=int,
        help=f"phrasings per fact (default: {settings.training.questions_per_fact})",
    )


def _specific(sub: argparse.ArgumentParser, name: str, settings: Settings) -> None:
    if name == "capacity":
        sub.add_argument("--ranks", default="2,4,8,16")
        sub.add_argument("--counts", default="16,32,64")
        sub.add_argument(
            "--reuse", action="store_true", help="keep matching points of a run in --out"
        )
    if name in _VALUES:
        sub.add_argument("--values", default=_VALUES[name], help="comma-separated")
    if name in (*_VALUES, "multi-module"):
        sub.add_argument("--count", type=int, default=32 if name == "multi-module" else 16)
        sub.add_argument("--rank", type=int, default=4 if name == "multi-module" else 8)
    if name == "multi-module":
        sub.add_argument("--modules", type=int, default=4, help="small modules")
        sub.add_argument("--combination", default="ties", choices=["ties", "linear", "cat"])
    if name == "routing":
        sub.add_argument("--sizes", default="16,64,256", help="module counts")
        sub.add_argument("--weights", default="0,0.3", help="lexical weights (0: dense)")
        sub.add_argument("--people", type=int, default=200, help="people asked per size")
    if name == "subject":
        sub.add_argument("--edits", type=int, default=0, help="CounterFact 4K edits (0: all)")
        sub.add_argument("--people", type=int, default=1000, help="PhoneBook facts")
        sub.add_argument("--papers", type=int, default=10, help="PaperQA papers (0: none)")
        sub.add_argument(
            "--max-words",
            default=str(settings.router_subject_max_words),
            help="LORAMEM_ROUTER_SUBJECT_MAX_WORDS of the check's arms, comma-separated",
        )
        sub.add_argument(
            "--thresholds",
            default="",
            help="route thresholds to sweep with the check on, comma-separated (default: none)",
        )
    _data_set_flags(sub, name)


def _data_set_flags(sub: argparse.ArgumentParser, name: str) -> None:
    """Flags of the evaluations that ingest a data set with the system's own training."""
    if name in ("phonebook", "counterfact", "paperqa"):
        sub.add_argument("--arms", default="base,icl,rag,lora,hybrid")
    if name in ("phonebook", "counterfact", "paperqa", "phonebook-scale", "read-your-writes"):
        sub.add_argument("--recall-gate", type=float, help="default: the system's gate")
    if name in ("phonebook", "counterfact"):
        sub.add_argument("--count", type=int, default=32 if name == "phonebook" else 16)
    if name == "phonebook-scale":
        sub.add_argument("--count", type=int, default=1000, help="facts (PhoneBook rows)")
        sub.add_argument("--batch", type=int, default=50, help="facts per POST /facts")
        sub.add_argument(
            "--paraphrases", type=float, default=1.0, help="share of facts asked in paraphrases"
        )
        sub.add_argument(
            "--modes",
            default="auto",
            help="answer modes, each asked every question (auto: none named; lora, rag, hybrid)",
        )
        sub.add_argument(
            "--ask-while-training",
            action="store_true",
            help="ask each fact once its module is published, while the rest trains",
        )
        sub.add_argument(
            "--wait-s",
            type=float,
            default=0,
            help="stop waiting for training after this long, then ask every fact (0: no limit)",
        )
    if name == "read-your-writes":
        sub.add_argument("--datasets", default="phonebook,counterfact")
        sub.add_argument("--count", type=int, default=20, help="facts per data set")
        sub.add_argument("--edits", type=int, default=4, help="facts edited (PUT) afterwards")
        sub.add_argument("--interims", default="rag,hybrid,off", help="interim arms compared")
    if name == "ingest-held":
        sub.add_argument("--held", default="0,50", help="facts held before, comma-separated")
        sub.add_argument("--facts", type=int, default=10, help="new facts, timed")
        sub.add_argument(
            "--fill",
            choices=["train", "cheap", "stored"],
            default="train",
            help="held facts trained, trained one step, or stored untrained (jobs cancelled)",
        )
    if name == "paperqa":
        sub.add_argument("--papers", default="1", help="paper numbers, comma-separated")
        sub.add_argument("--questions", type=int, default=0, help="per paper (0: all)")
        sub.add_argument("--sentences", type=int, default=0, help="cut the text (0: all)")
        sub.add_argument(
            "--runs", type=int, default=1, help="repeats into fresh tenants, seed + 1 each"
        )
        sub.add_argument("--no-judge", action="store_true", help="BLEU and ROUGE-L only")


def _counterfact(sub: argparse.ArgumentParser, settings: Settings) -> None:
    sub.add_argument(
        "--file",
        default="1K",
        choices=COUNTERFACT_SIZES,
        help="counterfact_edit_<file>.csv (--count 0: all its edits)",
    )
    sub.add_argument(
        "--batch",
        type=int,
        default=settings.module_capacity_facts,
        help="facts per POST /facts (default: a module's capacity)",
    )
    sub.add_argument("--locality", type=int, help="unedited prompts (default: one per edit)")
    sub.add_argument("--max-tokens", type=int, default=24, help="per greedy answer")
    sub.add_argument("--run-id", help="resume that run: post only the facts its tenant lacks")


def _span(sub: argparse.ArgumentParser) -> None:
    # The runs in docs/RESULTS.md read rows 1200 on (tests/integration/test_span.py too).
    sub.set_defaults(offset=1200)
    sub.add_argument("--modules", type=int, default=4, help="PhoneBook modules")
    sub.add_argument("--facts", type=int, default=8, help="facts per module")
    sub.add_argument("--pairs", type=int, default=40, help="two-module questions")
    # 64: a rag answer repeats both names before the numbers, and 40 tokens cut off
    # the second number (docs/RESULTS.md, Questions that span modules).
    sub.add_argument("--max-tokens", type=int, default=64, help="per answer (and part)")
    sub.add_argument("--arms", help="comma-separated (default: all, evaluation/span.py)")
    sub.add_argument("--recall-gate", type=float, help="default: the system's gate")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from evaluation import (
        counterfact,
        data_evals,
        experiments,
        ingest_held,
        phonebook_scale,
        read_your_writes,
        routing,
        span,
        subject,
    )
    from evaluation.run import EvalRun

    handlers: dict[str, Callable[[EvalRun], dict[str, Any]]] = {
        "capacity": experiments.capacity,
        "formats": experiments.compare,
        "variants": experiments.compare,
        "targets": experiments.compare,
        "multi-module": experiments.multi_module,
        "phonebook": data_evals.phonebook_eval,
        "phonebook-scale": phonebook_scale.phonebook_scale,
        "counterfact": counterfact.counterfact_eval,
        "paperqa": data_evals.paperqa_eval,
        "routing": routing.routing_eval,
        "subject": subject.subject_eval,
        "read-your-writes": read_your_writes.read_your_writes,
        "ingest-held": ingest_held.ingest_held,
        "span": span.span_eval,
    }
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "experiment", "out")}
    resumed = {"run_id": args.run_id} if getattr(args, "run_id", None) else {}
    evaluation = EvalRun(
        experiment=args.experiment,
        gateway=args.gateway,
        out=args.out or Path("eval-results") / args.experiment,
        settings=settings,
        flags=flags,
        concurrency=args.concurrency,
        **resumed,
    )
    outcome = handlers[args.experiment](evaluation)
    evaluation.finish(outcome["results"], outcome["report"], outcome["figures"])
    return 0
