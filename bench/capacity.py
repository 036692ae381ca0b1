"""How many facts a module holds: recall against fact count, rank and data format.

    .venv/bin/python -m bench.capacity --ranks 4,8 --counts 16,32,64,96 --formats qa

Trains the real base model in this process with the trainer's own code (no server), on
the first N PhoneBook entries, with the gate's own recall check (greedy, exact value).
The capacity of a rank is the largest N whose recall is at least --gate.
"""

from __future__ import annotations

import argparse
import time

import torch

from loramem.base_model import prepare_base_model
from loramem.datasets import phonebook
from loramem.knobs import TrainingKnobs
from loramem.settings import Settings
from trainer import train as training
from trainer.synth import fact_qa


def measure(settings: Settings, config: TrainingKnobs, count: int) -> tuple[float, int, float]:
    people = phonebook(settings.data_dir, count)
    qas = [fact_qa(str(i), p.fact, config.questions_per_fact) for i, p in enumerate(people)]
    base, tokenizer = training.load_base(prepare_base_model(settings))
    peft_model = training.make_peft_model(base, config)
    examples = training.build_examples(tokenizer, qas, config.data_format)
    first = training.first_trained_layer(base, config)
    started = time.perf_counter()
    prefix = training.FrozenPrefix(peft_model, examples, first, tokenizer.pad_token_id)
    result = training.train(peft_model, prefix, config)
    recall, _ = training.recall(peft_model, tokenizer, qas)
    return recall, result.steps, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ranks", default="8")
    parser.add_argument("--counts", default="16,32,64")
    parser.add_argument("--formats", default="qa")
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--gate", type=float, default=0.95)
    args = parser.parse_args()
    settings = Settings()
    torch.set_num_threads(settings.train_threads or torch.get_num_threads())
    print("| rank | format | facts | trainable params | recall | steps | seconds |")
    print("|---|---|---|---|---|---|---|")
    capacity: dict[tuple[int, str], int] = {}
    for rank in (int(r) for r in args.ranks.split(",")):
        for data_format in args.formats.split(","):
            config = settings.training.with_overrides(
                {"rank": rank, "data_format": data_format, "max_steps": args.max_steps}
            )
            params = trainable_parameters(settings, config)
            for count in (int(c) for c in args.counts.split(",")):
                recall, steps, seconds = measure(settings, config, count)
                print(
                    f"| {rank} | {data_format} | {count} | {params} | {recall:.3f} | "
                    f"{steps} | {seconds:.0f} |",
                    flush=True,
                )
                if recall >= args.gate:
                    capacity[(rank, data_format)] = max(capacity.get((rank, data_format), 0), count)
    print(f"\ncapacity at recall >= {args.gate} (largest count tried that passed):")
    for (rank, data_format), count in sorted(capacity.items()):
        print(f"  rank {rank}, {data_format}: {count} facts")


def trainable_parameters(settings: Settings, config: TrainingKnobs) -> int:
    base, _ = training.load_base(prepare_base_model(settings))
    model = training.make_peft_model(base, config)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


if __name__ == "__main__":
    main()
