"""LoRA training on QA pairs, and the recall check that gates publishing.

The loop reads top to bottom in `train`: no callback framework and no Redis inside; the
caller gets one `on_step` call per optimizer step and may raise to stop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from trainer.config import TrainConfig
from trainer.synth import FactQA

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens: only the answer is learned


@dataclass
class TrainResult:
    steps: int
    loss: float
    seconds: float


StepCallback = Callable[[int, int, float], None]  # (step, max_steps, loss)


def load_base(model_path: Path) -> tuple[Any, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    return model, tokenizer


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """The exact token ids the engine's chat endpoint builds for one user message."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_examples(tokenizer: PreTrainedTokenizerBase, qas: list[FactQA]) -> list[Example]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_ids = [end] if isinstance(end, int) and end >= 0 else [tokenizer.eos_token_id]
    examples = []
    for qa in qas:
        answer_ids = list(tokenizer(qa.answer, add_special_tokens=False)["input_ids"]) + end_ids
        for question in qa.questions:
            prompt_ids = chat_prompt_ids(tokenizer, question)
            examples.append(
                Example(prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids)
            )
    return examples


def make_peft_model(model: Any, config: TrainConfig) -> PeftModel:
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=0.0,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        labels[row, : len(e.labels)] = torch.tensor(e.labels)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def answer_loss(peft_model: PeftModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy on answer tokens only. The vocabulary projection (49k wide) runs just
    on the positions that carry a label, which saves a large share of each step."""
    causal_lm: Any = peft_model.get_base_model()
    hidden = causal_lm.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = causal_lm.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits, targets[keep])


def train(
    peft_model: PeftModel,
    examples: list[Example],
    config: TrainConfig,
    pad_id: int,
    on_step: StepCallback | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    steps_limit = max_steps or config.max_steps
    torch.manual_seed(config.seed)
    shuffler = random.Random(config.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    # Cosine decay to 10% of the peak: the paper's schedule, but never down to zero, since
    # training usually stops early on the loss target.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps_limit, 1)))
    )
    peft_model.train()
    started = time.perf_counter()
    order: list[Example] = []
    loss_value = float("inf")
    step = 0
    while step < steps_limit:
        if len(order) < config.batch_size:  # a fresh shuffled pass over the data
            fresh = examples[:]
            shuffler.shuffle(fresh)
            order.extend(fresh)
        chunk, order = order[: config.batch_size], order[config.batch_size :]
        loss = answer_loss(peft_model, _batch(chunk, pad_id))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = loss.item()
        if on_step:
            on_step(step, steps_limit, loss_value)
        if loss_value < config.target_loss and (
            # A batch smaller than the data set is a noisy estimate: confirm on all of it.
            len(examples) <= config.batch_size
            or full_loss(peft_model, examples, pad_id, config.batch_size) < config.target_loss
        ):
            break
    return TrainResult(steps=step, loss=loss_value, seconds=time.perf_counter() - started)


@torch.no_grad()
def full_loss(
    peft_model: PeftModel, examples: list[Example], pad_id: int, batch_size: int
) -> float:
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        total += answer_loss(peft_model, _batch(chunk, pad_id)).item() * len(chunk)
        count += len(chunk)
    return total / max(count, 1)


@torch.no_grad()
def recall(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    qas: list[FactQA],
    batch_size: int = 16,
    max_new_tokens: int = 40,
) -> tuple[float, list[str]]:
    """Greedy answers to each fact's first question; a hit contains the expected value."""
    peft_model.eval()
    answers: list[str] = []
    tokenizer.padding_side = "left"
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    for start in range(0, len(qas), batch_size):
        chunk = qas[start : start + batch_size]
        prompts = [chat_prompt_ids(tokenizer, qa.questions[0]) for qa in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = peft_model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
        )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    hits = sum(qa.expected.lower() in a.lower() for qa, a in zip(qas, answers, strict=True))
    return hits / max(len(qas), 1), answers


def save_adapter(peft_model: PeftModel, folder: Path, config: TrainConfig) -> None:
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "training_config.json").write_text(config.to_json())
