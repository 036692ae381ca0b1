"""The training config that travels with every adapter version (training_config.json)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from loramem.settings import Settings

TARGET_MODULES = {
    "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "feed-forward": ["gate_proj", "up_proj", "down_proj"],
}


@dataclass(frozen=True)
class TrainConfig:
    base_model: str  # HF id or path of the base model the adapter belongs to
    rank: int  # LoRA rank r
    alpha: float  # LoRA alpha; the paper used alpha = r
    targets: str  # "all-linear", "attention" or "feed-forward"
    top_layers: int  # LoRA only on this many top decoder layers; 0 = all layers
    variant: str  # "lora", "dora" (weight-decomposed) or "pissa" (SVD initialisation)
    learning_rate: float  # AdamW peak learning rate (cosine decay to 10%)
    max_steps: int  # hard stop on optimizer steps
    target_loss: float  # stop early once the mean answer-token loss is below this
    batch_size: int  # examples per optimizer step
    seed: int  # torch seed: same facts + config -> same adapter
    questions_per_fact: int  # phrasings of each fact in the QA training data
    data_format: str  # "qa", "rewrite" or "mixed" (synth.FORMATS)
    recall_gate: float  # recall on the module's own facts a version needs to be published

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        values: dict[str, Any] = {
            "base_model": settings.base_model,
            "rank": settings.lora_rank,
            "alpha": settings.lora_alpha,
            "targets": settings.lora_targets,
            "top_layers": settings.lora_top_layers,
            "variant": settings.lora_variant,
            "learning_rate": settings.learning_rate,
            "max_steps": settings.train_max_steps,
            "target_loss": settings.train_target_loss,
            "batch_size": settings.train_batch_size,
            "seed": settings.train_seed,
            "questions_per_fact": settings.questions_per_fact,
            "data_format": settings.data_format,
            "recall_gate": settings.recall_gate,
        }
        values.update(overrides)
        if "rank" in overrides and "alpha" not in overrides:
            values["alpha"] = float(overrides["rank"])  # keep alpha = r, as the paper did
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def target_modules(self) -> list[str]:
        return TARGET_MODULES[self.targets]
