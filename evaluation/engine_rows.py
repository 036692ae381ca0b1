"""A base request next to module requests on the real engine: does it get an adapter?

In a step that mixes requests with and without an adapter, vLLM's CPU LoRA ops gave the
adapter-less ones the last slot's adapter (the cause, and the fix, are in
loramem/vllm_cpu_lora.py). `check` starts an engine with `max_loras` modules of the
default shape with large random weights (so each one changes the greedy text), and asks
one base completion alone, then while module requests generate in the same steps.
bench/lora_base_rows.py prints the answers; tests/e2e/test_engine_rows.py asserts on them.
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
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

    @property
    def same(self) -> bool:
        return all(answer == self.alone for answer in self.mixed)


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
        mixed = []
        for _ in range(trials):
            with concurrent.futures.ThreadPoolExecutor(len(names) + 1) as pool:
                busy = [pool.submit(complete, url, name, 200) for name in names]
                time.sleep(0.5)  # the module requests are decoding: the base one joins them
                mixed.append(pool.submit(complete, url, base).result())
                for future in busy:
                    future.result()
    return BaseRows(alone, modules, mixed)
