"""Training speed of the trainer's own loop, configurations side by side in one run.

    .venv/bin/python -m bench.trainer_speed --facts 10,48 \
        --configs "top_layers=0" "top_layers=12" "top_layers=12,batch_size=16"

Each configuration is a comma-separated list of training-knob overrides on top of the
settings (an empty string is the defaults). For every fact count and configuration it
trains the real base model on the first N PhoneBook facts until the loss target, exactly
as the worker's first round does, then measures recall with the gate's own check.
Printed: seconds per step, steps, training and total seconds, recall, and each
configuration's total time as a ratio of the first one's.

    .venv/bin/python -m bench.trainer_speed --paper 0 --piece-chars 2000,240 --configs ""

trains a PaperQA introduction instead, split into facts as `POST /documents` splits it,
once per longest piece (LORAMEM_MAX_FACT_CHARS is the system's); the table then also
gives the facts, the training rows and their mean and longest length in tokens.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch

from loramem.base_model import prepare_base_model
from loramem.datasets import paperqa, phonebook
from loramem.documents import split_document
from loramem.knobs import TrainingKnobs
from loramem.settings import Settings
from trainer import train as training
from trainer.synth import fact_qa


@dataclass
class Timing:
    steps: int
    train_s: float
    total_s: float
    recall: float
    rows: int
    mean_tokens: float
    max_tokens: int


def parse_overrides(text: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, raw = item.partition("=")
        if key not in TrainingKnobs.model_fields:
            raise SystemExit(f"unknown training knob {key!r}")
        overrides[key] = raw  # pydantic turns "4" into 4 where the knob is a number
    return overrides


def measure(settings: Settings, overrides: dict[str, Any], facts: list[str]) -> Timing:
    config = settings.training.with_overrides(overrides)
    qas = [fact_qa(str(i), fact, config.questions_per_fact) for i, fact in enumerate(facts)]
    started = time.perf_counter()
    base, tokenizer = training.load_base(prepare_base_model(settings))
    peft_model = training.make_peft_model(base, config)
    examples = training.build_examples(tokenizer, qas, config.data_format)
    first = training.first_trained_layer(base, config)
    prefix = training.FrozenPrefix(peft_model, examples, first, tokenizer.pad_token_id)
    result = training.train(peft_model, prefix, config)
    recall, _answers = training.recall(peft_model, tokenizer, qas)
    lengths = [len(e.input_ids) for e in examples]
    return Timing(
        result.steps,
        result.seconds,
        time.perf_counter() - started,
        recall,
        len(examples),
        sum(lengths) / len(lengths),
        max(lengths),
    )


def fact_sets(settings: Settings, args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """(label, facts): the first N PhoneBook facts per --facts, or the paper's pieces."""
    if args.paper is None:
        counts = [int(c) for c in args.facts.split(",")]
        return [(str(n), [p.fact for p in phonebook(settings.data_dir, n)]) for n in counts]
    text = paperqa(settings.data_dir, args.paper).introduction
    caps = [int(c) for c in (args.piece_chars or str(settings.max_fact_chars)).split(",")]
    return [(f"paper {args.paper} <= {cap} chars", split_document(text, cap)) for cap in caps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", default="10,48")
    parser.add_argument("--configs", nargs="+", default=["top_layers=0", ""])
    parser.add_argument("--paper", type=int, help="a PaperQA introduction instead")
    parser.add_argument("--piece-chars", help="longest document pieces, comma-separated")
    args = parser.parse_args()
    settings = Settings()
    torch.set_num_threads(settings.train_threads or torch.get_num_threads())
    print(f"torch threads: {torch.get_num_threads()}")
    print(
        "| facts | config | rows | tokens mean / max | s/step | steps | train s | total s "
        "| recall | total vs first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first_total = None
    for label, facts in fact_sets(settings, args):
        if args.paper is None:
            first_total = None  # PhoneBook: ratios within one fact count
        for text in args.configs:
            timing = measure(settings, parse_overrides(text), facts)
            first_total = first_total or timing.total_s
            print(
                f"| {label} ({len(facts)}) | {text or 'defaults'} | {timing.rows} | "
                f"{timing.mean_tokens:.0f} / {timing.max_tokens} | "
                f"{timing.train_s / timing.steps:.2f} | {timing.steps} | "
                f"{timing.train_s:.1f} | {timing.total_s:.1f} | {timing.recall:.3f} | "
                f"{timing.total_s / first_total:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
