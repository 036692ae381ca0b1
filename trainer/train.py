"""LoRA training on QA pairs, and the recall check that gates publishing.

The loop reads top to bottom in `train`: no callback framework and no Redis inside; the
caller gets one `on_step` call per optimizer step and may raise to stop.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from loramem.knobs import LORA_TARGETS, TrainingKnobs, first_lora_layer
from trainer.synth import FactQA

IGNORE = -100


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE on prompt tokens: only the answer is learned
    # A question with one right answer: greedy decoding must reproduce it. (A rewrite
    # prompt has several answers, so no single one of them can be exact.)
    asks: bool = True


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


def build_examples(
    tokenizer: PreTrainedTokenizerBase, qas: list[FactQA], data_format: str = "qa"
) -> list[Example]:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end_ids = [end] if isinstance(end, int) and end >= 0 else [tokenizer.eos_token_id]
    examples = []
    for qa in qas:
        for prompt, answer in qa.pairs(data_format):
            prompt_ids = chat_prompt_ids(tokenizer, prompt)
            answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"]) + end_ids
            examples.append(
                Example(
                    prompt_ids + answer_ids,
                    [IGNORE] * len(prompt_ids) + answer_ids,
                    asks=prompt in qa.questions,
                )
            )
    return examples


def first_trained_layer(model: Any, config: TrainingKnobs) -> int:
    return first_lora_layer(int(model.config.num_hidden_layers), config.top_layers)


def make_peft_model(model: Any, config: TrainingKnobs) -> PeftModel:
    first = first_trained_layer(model, config)
    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.lora_alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS[config.targets].peft),
        layers_to_transform=list(range(first, model.config.num_hidden_layers)) if first else None,
        init_lora_weights=INIT_WEIGHTS[config.variant],
        use_dora=config.variant == "dora",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


INIT_WEIGHTS: dict[str, Any] = {"lora": True, "dora": True, "pissa": "pissa_niter_4"}


@contextmanager
def _decoder_span(causal_lm: Any, start: int, end: int, final_norm: bool) -> Iterator[Any]:
    """Run only decoder layers [start, end) of a Llama-style model (model.model.layers)."""
    inner = causal_lm.model
    layers, norm = inner.layers, inner.norm
    inner.layers = layers[start:end]
    if not final_norm:
        inner.norm = torch.nn.Identity()
    try:
        yield inner
    finally:
        inner.layers, inner.norm = layers, norm


class FrozenPrefix:
    """Hidden states after the frozen bottom layers, computed once per job.

    LoRA sits only on the top layers, so everything below them is the same at every step:
    running it once instead of every step is most of the speed-up of top-layer training.
    """

    def __init__(self, peft_model: PeftModel, examples: list[Example], first: int,
                 pad_id: int, batch_size: int = 32) -> None:  # fmt: skip
        self.causal_lm: Any = peft_model.get_base_model()
        self.first = first
        self.examples = examples
        self.hidden: list[torch.Tensor] = []
        with torch.no_grad(), _decoder_span(self.causal_lm, 0, first, final_norm=False) as bottom:
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                batch = _batch(chunk, pad_id)
                if first:
                    out = bottom(
                        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                    )
                    states = out.last_hidden_state
                else:
                    states = bottom.embed_tokens(batch["input_ids"])
                self.hidden += [states[i, : len(e.input_ids)] for i, e in enumerate(chunk)]

    def loss(self, rows: list[int]) -> torch.Tensor:
        """Cross-entropy on answer tokens only, through the trained top layers."""
        logits, targets, _ = self._answer_logits(rows)
        return torch.nn.functional.cross_entropy(logits, targets)

    @torch.no_grad()
    def weak_rows(self, rows: list[int], batch_size: int) -> tuple[list[int], float]:
        """The question rows whose answer greedy decoding would not reproduce exactly (some
        answer token is not the argmax under teacher forcing), and the rows' mean loss."""
        weak: list[int] = []
        total = 0.0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            logits, targets, owner = self._answer_logits(chunk)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            wrong = logits.argmax(-1) != targets
            for i, r in enumerate(chunk):
                mine = owner == i
                total += losses[mine].mean().item()
                if self.examples[r].asks and bool(wrong[mine].any()):
                    weak.append(r)
        return weak, total / max(len(rows), 1)

    def _answer_logits(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits and targets at every answer token of `rows`, and each token's row index."""
        width = max(len(self.examples[r].input_ids) for r in rows)
        states = torch.zeros((len(rows), width, self.hidden[0].shape[-1]))
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            length = len(self.examples[r].input_ids)
            states[i, :length] = self.hidden[r]
            mask[i, :length] = 1
            labels[i, :length] = torch.tensor(self.examples[r].labels)
        total = self.causal_lm.config.num_hidden_layers
        with _decoder_span(self.causal_lm, self.first, total, final_norm=True) as top:
            hidden = top(inputs_embeds=states, attention_mask=mask).last_hidden_state
        targets = labels[:, 1:]
        keep = targets != IGNORE
        # The 49k-wide vocabulary projection runs only where a label is: a large saving.
        logits = self.causal_lm.lm_head(hidden[:, :-1][keep])
        owner = torch.arange(len(rows)).unsqueeze(1).expand_as(targets)[keep]
        return logits, targets[keep], owner


def _batch(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[row, : len(e.input_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def train(
    peft_model: PeftModel,
    prefix: FrozenPrefix,
    config: TrainingKnobs,
    on_step: StepCallback | None = None,
) -> TrainResult:
    torch.manual_seed(config.seed)
    shuffler = random.Random(config.seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    # Cosine decay to 10% of the peak: the paper's schedule, but never down to zero, since
    # training usually stops early on the loss target.
    limit = config.max_steps
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / limit, 1)))
    )
    peft_model.train()
    started = time.perf_counter()
    everything = list(range(len(prefix.examples)))
    order: list[int] = []
    weak: list[int] = []  # questions greedy decoding still misses: the next pass drills them
    loss_value = float("inf")
    step = 0
    while step < limit:
        if not order and weak:
            order = _drill(weak, everything, config.batch_size, shuffler)
        elif not order:  # a fresh shuffled pass over the data
            order = everything[:]
            shuffler.shuffle(order)
        rows, order = order[: config.batch_size], order[config.batch_size :]
        loss = prefix.loss(rows)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = loss.item()
        if on_step:
            on_step(step, limit, loss_value)
        if order or (not weak and loss_value >= 2 * config.target_loss):
            continue  # mid-pass, or a whole pass still far from the target
        # Stop only when the loss is under the target *and* every question's answer is
        # greedy-exact: a low mean loss alone often hides one fact with a wrong digit, and
        # finding that out at the recall check costs a whole extra round of training.
        drilled = bool(weak)
        weak, mean = prefix.weak_rows(weak or everything, config.batch_size)
        if drilled and not weak:  # the drilled rows are fixed: check that nothing else broke
            weak, mean = prefix.weak_rows(everything, config.batch_size)
        if not weak and mean < config.target_loss:
            break
    return TrainResult(steps=step, loss=loss_value, seconds=time.perf_counter() - started)


def _drill(weak: list[int], everything: list[int], size: int, rng: random.Random) -> list[int]:
    """A short pass: the weak rows, topped up to whole batches with replayed others so the
    facts already learnt are not forgotten meanwhile."""
    drilled = set(weak)
    others = [r for r in everything if r not in drilled]
    room = -len(weak) % size
    rows = weak + rng.sample(others, min(room, len(others)))
    rng.shuffle(rows)
    return rows


@torch.no_grad()
def recall(
    peft_model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    qas: list[FactQA],
    batch_size: int = 16,
) -> tuple[float, list[str]]:
    """Greedy answers to each fact's first question; a hit contains the expected value.
    Each batch may generate its longest trained answer and a little more: the value often
    ends a long sentence, and a fixed cap cut it off (a paper's sentence never passed)."""
    peft_model.eval()
    answers: list[str] = []
    tokenizer.padding_side = "left"
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    for start in range(0, len(qas), batch_size):
        chunk = qas[start : start + batch_size]
        prompts = [chat_prompt_ids(tokenizer, qa.questions[0]) for qa in chunk]
        longest = max(
            len(tokenizer(qa.answer, add_special_tokens=False)["input_ids"]) for qa in chunk
        )
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        out = peft_model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest + 8,
            do_sample=False,
            pad_token_id=pad_id,
        )
        answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    hits = sum(is_hit(qa, a) for qa, a in zip(qas, answers, strict=True))
    return hits / max(len(qas), 1), answers


def is_hit(qa: FactQA, answer: str) -> bool:
    """Whether a generated answer to the fact's gate question holds its value."""
    return qa.expected.lower() in answer.lower()


def warm_start(peft_model: PeftModel, adapter_weights: bytes) -> None:
    """Begin from an earlier version's weights (same shape), so known facts stay learnt."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load as load_safetensors

    set_peft_model_state_dict(peft_model, load_safetensors(adapter_weights))
