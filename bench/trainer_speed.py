"""Training speed of the trainer's own loop, configurations side by side in one run.

    .venv/bin/python -m bench.trainer_speed --facts 10,48 \
        --configs "top_layers=0" "top_layers=12" "top_layers=12,batch_size=16"

Each configuration is a comma-separated list of training-knob overrides on top of the
settings (an empty string is the defaults). For every fact count and configuration it
trains the real base model on the first N PhoneBook facts until the loss target, exactly
as the worker's first round does, then measures recall with the gate's own check.
Printed: seconds per step, steps, training and total seconds, recall, and each
configuration's total time as a ratio of the first one's.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import torch

from loramem.base_model import prepare_base_model
from loramem.datasets import phonebook
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


def parse_overrides(text: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, raw = item.partition("=")
        if key not in TrainingKnobs.model_fields:
            raise SystemExit(f"unknown training knob {key!r}")
        overrides[key] = raw  # pydantic turns "4" into 4 where the knob is a number
    return overrides


def measure(settings: Settings, overrides: dict[str, Any], count: int) -> Timing:
    config = settings.training.with_overrides(overrides)
    people = phonebook(settings.data_dir, count)
    qas = [fact_qa(str(i), p.fact, config.questions_per_fact) for i, p in enumerate(people)]
    started = time.perf_counter()
    base, tokenizer = training.load_base(prepare_base_model(settings))
    peft_model = training.make_peft_model(base, config)
    examples = training.build_examples(tokenizer, qas, config.data_format)
    first = training.first_trained_layer(base, config)
    prefix = training.FrozenPrefix(peft_model, examples, first, tokenizer.pad_token_id)
    result = training.train(peft_model, prefix, config)
    recall, _answers = training.recall(peft_model, tokenizer, qas)
    return Timing(result.steps, result.seconds, time.perf_counter() - started, recall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--facts", default="10,48")
    parser.add_argument("--configs", nargs="+", default=["top_layers=0", ""])
    args = parser.parse_args()
    settings = Settings()
    torch.set_num_threads(settings.train_threads or torch.get_num_threads())
    print(f"torch threads: {torch.get_num_threads()}")
    print("| facts | config | s/step | steps | train s | total s | recall | total vs first |")
    print("|---|---|---|---|---|---|---|---|")
    for count in (int(c) for c in args.facts.split(",")):
        first_total = None
        for text in args.configs:
            timing = measure(settings, parse_overrides(text), count)
            first_total = first_total or timing.total_s
            print(
                f"| {count} | {text or 'defaults'} | {timing.train_s / timing.steps:.2f} | "
                f"{timing.steps} | {timing.train_s:.1f} | {timing.total_s:.1f} | "
                f"{timing.recall:.3f} | {timing.total_s / first_total:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
