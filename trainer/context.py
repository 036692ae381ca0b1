"""What every job handler needs, built once by the worker."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loramem.adapter_store import AdapterStore
from loramem.registry import Registry
from loramem.settings import Settings
from trainer.answer_pause import AnswerPause
from trainer.metrics import TrainerMetrics
from trainer.synth import Generator


@dataclass(frozen=True)
class TrainerContext:
    settings: Settings
    registry: Registry
    store: AdapterStore
    metrics: TrainerMetrics
    generator: Generator
    model_path: Path  # the converted base model
    answer_pause: AnswerPause | None = None  # None: train straight through
