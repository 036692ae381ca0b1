"""A base request next to module requests on the real engine: does it get an adapter?

In a step that mixes requests with and without an adapter, vLLM's CPU LoRA ops gave the
adapter-less ones the last slot's adapter (the cause, and the fix, are in
loramem/vllm_cpu_lora.py). `check` starts an engine with `max_loras` modules of the
default shape with large random weights (so each one changes the greedy text), and asks
one base completion alone, then while module requests generate in the same steps; it
keeps the module answers of those steps too (every module in one step).
bench/lora_base_rows.py prints the answers; tests/e2e/test_engine_rows.py asserts on them.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from evaluation.engine_harness import engine, load_adapters, make_adapters
from loramem.base_model import prepare_base_model
from loramem.settings import Settings

PROMPT = "The capital of France is"


@dataclass
class BaseRows:
    alone: str  # the base model's answer with no adapter request in flight
    modules: dict[str, str]  # each module's own answer
    mixed: list[str]  # base answers while module requests share the engine's steps
    # each module's (longer) answers from those same steps, every module in one step
    mixed_modules: dict[str, list[str]] = field(default_factory=dict)

    @property
    def same(self) -> bool:
        return all(answer == self.alone for answer in self.mixed)

    @property
    def modules_kept(self) -> bool:
        """Every module request in a shared step answered like its own module alone: its
        answer shares a longer start with that module's answer alone than with any other
        module's or the base model's (a borrowed adapter would answer like another;
        exact equality would also demand bit-equal arithmetic across batch shapes)."""
        alone = {**self.modules, "": self.alone}
        return all(
            _shared_start(answer, alone[name])
            > max(_shared_start(answer, text) for other, text in alone.items() if other != name)
            for name, answers in self.mixed_modules.items()
            for answer in answers
        )


def _shared_start(a: str, b: str) -> int:
    return len(os.path.commonprefix([a, b]))


def complete(url: str, model: str, tokens: int = 24) -> str:
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    reply = httpx.post(url + "/v1/completions", json=body, timeout=600)
    reply.raise_for_status()
    return str(reply.json()["choices"][0]["text"])


def check(settings: Settings, folder: Path, trials: int = 2) -> BaseRows:
    model_path = prepare_base_model(settings)
    # Large weights, so every module changes the greedy text and borrowing one shows.
    paths = make_adapters(settings, model_path, folder, settings.engine_max_loras, std=0.1)
    with engine(settings, model_path) as url:
        names = load_adapters(url, paths)
        base = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        alone = complete(url, base)
        modules = {name: complete(url, name) for name in names}  # every slot now holds one
        mixed: list[str] = []
        mixed_modules: dict[str, list[str]] = {name: [] for name in names}
        for _ in range(trials):
            with concurrent.futures.ThreadPoolExecutor(len(names) + 1) as pool:
                busy = [pool.submit(complete, url, name, 200) for name in names]
                time.sleep(0.5)  # the module requests are decoding: the base one joins them
                mixed.append(pool.submit(complete, url, base).result())
                for name, future in zip(names, busy, strict=True):
                    mixed_modules[name].append(future.result())
    return BaseRows(alone, modules, mixed, mixed_modules)
