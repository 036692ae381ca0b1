"""Serving throughput and latency: engine base, engine + module, gateway, transformers + PEFT.

    .venv/bin/python -m bench.serving                      # the serving tables
    .venv/bin/python -m bench.serving --only variants      # the engine's LoRA cost, per setting

Every target gets the same chat prompts (questions about facts the gateway section teaches
the system), `max_tokens` tokens each with `ignore_eos` so every answer has the same length,
at concurrency 1, 4 and 16 (a fixed number of requests per cell, after a short warm-up):
- `engine base`: vLLM's server (loramem's engine command), model = the base model's name;
- `engine 1 module`: the same engine, model = one rank-8 feed-forward module of the default
  shape (top layers, as the trainer builds it). Its weights are random, not learnt: the
  serving cost does not depend on what an adapter holds, only on its shape;
- `gateway auto`: worker and gateway started against the same engine, facts posted and
  trained into a real module, then `model=auto` (router + proxy + the module);
- `peft`: bench/peft_server.py, transformers + PEFT with batched mixed adapters, started
  after the engine has stopped (never two model servers on the cores at once).
The mixed table spreads requests over 1, 8, 64 and 256 distinct modules on the engine (the
module-count curve); the engine keeps `max_loras` adapters in a batch and `max_cpu_loras`
resident (printed).
`--only mixed` runs only the curve, once per engine setting in `--variants` (a name below,
or settings joined by `+`: `max_loras=4+max_cpu_loras=32`), with vLLM's scheduler stats on:
each row shows how many requests the engine ran and kept waiting on average, and
`--profile-seconds` adds a py-spy profile of the largest module count on each engine.
`--only variants` starts one engine per setting named in `--variants` and measures base and
one module at the highest concurrency on each, side by side. A name ending in `+vllm-ops`
(`shape+vllm-ops`) runs that setting on vLLM's own CPU LoRA ops, with loramem's plugin off.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from evaluation.engine_harness import (
    engine,
    engine_process,
    load_adapters,
    make_adapters,
    process,
    system_env,
    teach,
)
from evaluation.serving_stats import (
    FACTS,
    QUESTIONS,
    Cell,
    Plan,
    chat_body,
    markdown_table,
    summarize,
)
from loramem.base_model import prepare_base_model
from loramem.settings import Settings


# ------------------------------------------------------------------ load driver
async def _drive(
    url: str,
    models: Sequence[str],
    concurrency: int,
    requests: int,
    max_tokens: int,
    headers: dict[str, str],
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    tokens = 0
    next_index = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal tokens, next_index
        while next_index < requests:
            i, next_index = next_index, next_index + 1
            body = chat_body(models[i % len(models)], QUESTIONS[i % len(QUESTIONS)], max_tokens)
            started = time.perf_counter()
            response = await client.post("/v1/chat/completions", json=body, headers=headers)
            response.raise_for_status()
            latencies.append(time.perf_counter() - started)
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return latencies, tokens, time.perf_counter() - started


@contextmanager
def engine_view(url: str, period_s: float = 0.5) -> Iterator[list[tuple[float, float]]]:
    """Samples of vLLM's (running, waiting) request gauges from the engine's /metrics while
    the block runs (the engine must keep its stats: `engine(..., log_stats=True)`)."""
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        with httpx.Client(base_url=url, timeout=5) as client:
            while not done.wait(period_s):
                gauges = {
                    s.name: s.value
                    for family in text_string_to_metric_families(client.get("/metrics").text)
                    for s in family.samples
                }
                running = gauges.get("vllm:num_requests_running")
                if running is not None:
                    samples.append((running, gauges.get("vllm:num_requests_waiting", 0.0)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join()


def measure(
    url: str,
    target: str,
    models: Sequence[str],
    concurrency: int,
    requests: int,
    max_tokens: int,
    headers: dict[str, str] | None = None,
    watch: bool = False,
) -> Cell:
    """`watch`: also sample the engine's running and waiting requests (its stats on)."""
    # Warm-up, untimed: first-use costs (adapter load into a slot, compile) are not serving.
    warm = min(len(models), 8)
    asyncio.run(_drive(url, models, warm, warm, 4, headers or {}))
    view: list[tuple[float, float]] = []
    with engine_view(url) if watch else _nothing() as samples:
        latencies, tokens, wall_s = asyncio.run(
            _drive(url, models, concurrency, requests, max_tokens, headers or {})
        )
        view = list(samples)
    cell = summarize(target, concurrency, latencies, tokens, wall_s)
    if view:
        running, waiting = (sum(v) / len(view) for v in zip(*view, strict=True))
        cell = dataclasses.replace(cell, running=running, waiting=waiting)
    print(
        f"  {target:<18} c={concurrency:<3} {cell.tokens_per_s:7.1f} tok/s  "
        f"p50 {cell.p50_s:6.2f} s  p99 {cell.p99_s:6.2f} s"
        + (f"  running {cell.running:.1f} waiting {cell.waiting:.1f}" if view else ""),
        flush=True,
    )
    return cell


@contextmanager
def _nothing() -> Iterator[list[tuple[float, float]]]:
    yield []


# ------------------------------------------------------------------ sections
def engine_cells(url: str, target: str, models: Sequence[str], plan: Plan) -> list[Cell]:
    return [
        measure(url, target, models, c, plan.requests(c), plan.max_tokens) for c in plan.concurrency
    ]


def mixed_cells(url: str, names: list[str], plan: Plan, watch: bool = False) -> list[Cell]:
    c = plan.mixed_concurrency
    return [
        # every module asked at least once
        measure(
            url,
            f"{n} modules",
            names[:n],
            c,
            max(plan.requests(c), n),
            plan.max_tokens,
            watch=watch,
        )
        for n in plan.mixed_modules
    ]


def gateway_cells(settings: Settings, plan: Plan) -> list[Cell]:
    """Worker + gateway on the running engine; facts taught for real, then model=auto."""
    env = system_env(settings)
    me = [sys.executable, "-m", "cli"]
    url = f"http://127.0.0.1:{settings.gateway_port}"
    tenant = {"x-loramem-tenant": f"bench-{uuid.uuid4().hex[:8]}"}  # a fresh, empty tenant
    with (
        process("worker", me + ["worker"], env, settings.engine_url + "/health", 60),
        process("gateway", me + ["gateway"], env, url + "/healthz", 120),
    ):
        teach(url, tenant, list(FACTS))
        time.sleep(3.0)  # the router applies the publish event from the stream
        probe = httpx.post(
            url + "/v1/chat/completions",
            json=chat_body("auto", QUESTIONS[0], 4),
            headers=tenant,
            timeout=120,
        )
        print(f"gateway routes to {probe.headers.get('x-loramem-module')}", flush=True)
        return [
            measure(url, "gateway auto", ["auto"], c, plan.requests(c), plan.max_tokens, tenant)
            for c in plan.concurrency
        ]


def peft_cells(
    settings: Settings, model_path: Path, adapters: list[Path], plan: Plan
) -> list[Cell]:
    port = settings.engine_port + 300  # 19800 next to the engine's 19500
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "bench.peft_server",
        "--model",
        str(model_path),
        "--port",
        str(port),
    ]
    command += ["--base-name", settings.base_name, "--adapter", f"{adapters[0].name}={adapters[0]}"]
    with process("peft_server", command, dict(os.environ), url + "/health", 300):
        return engine_cells(url, "peft 1 module", [adapters[0].name], plan)


# Engine settings compared by --only variants: name -> Settings overrides.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},  # the engine as loramem ships it (LORAMEM_* from the environment)
    "all": {"engine_lora_modules": "all"},  # vLLM's default: every linear layer wrapped
    "targets": {"engine_lora_modules": "targets"},  # the module's layer types only
    "shape": {"engine_lora_modules": "shape"},  # ... and only on its top layers
    "shape+max-loras-1": {"engine_lora_modules": "shape", "engine_max_loras": 1},
}
# Variants run on vLLM's own CPU LoRA ops: loramem's plugin (loramem/vllm_cpu_lora.py) off.
VLLM_OPS = {f"{name}+vllm-ops": overrides for name, overrides in VARIANTS.items()}


def variant_settings(settings: Settings, name: str) -> Settings:
    """A named variant, or engine settings joined by `+` (`max_loras=16+max_cpu_loras=64`,
    `engine_` implied); values are JSON (numbers) or plain text."""
    named = {**VARIANTS, **VLLM_OPS}
    if name in named:
        return settings.model_copy(update=named[name])
    overrides: dict[str, Any] = {}
    for part in name.split("+"):
        key, _, value = part.partition("=")
        field = key if key in Settings.model_fields else f"engine_{key}"
        if field not in Settings.model_fields or not value:
            raise SystemExit(f"unknown variant {part!r}: a name of {list(named)} or setting=value")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return Settings.model_validate({**settings.model_dump(), **overrides})


def variant_cells(
    settings: Settings, model_path: Path, adapters: list[Path], plan: Plan, names: list[str]
) -> list[Cell]:
    c = max(plan.concurrency)
    cells = []
    for name in names:
        config = variant_settings(settings, name)
        env = {"VLLM_PLUGINS": ""} if name in VLLM_OPS else {}
        with engine(config, model_path, env) as url:
            module = load_adapters(url, adapters[:1])
            cells.append(
                measure(
                    url, f"{name}: base", [settings.base_name], c, plan.requests(c), plan.max_tokens
                )
            )
            cells.append(
                measure(url, f"{name}: 1 module", module, c, plan.requests(c), plan.max_tokens)
            )
    return cells


def mixed_variant_cells(
    settings: Settings,
    model_path: Path,
    adapters: list[Path],
    plan: Plan,
    names: list[str],
    profile_s: int,
) -> list[list[Cell]]:
    """The module-count curve on one engine per setting, with the engine's own view."""
    from bench.profile_engine import WATCH, WATCH_ADAPTERS, profile

    tables = []
    for name in names:
        config = variant_settings(settings, name)
        env = {"VLLM_PLUGINS": ""} if name in VLLM_OPS else {}
        print(
            f"{name}: max_loras {config.engine_max_loras}, "
            f"max_cpu_loras {config.engine_max_cpu_loras}",
            flush=True,
        )
        with engine_process(config, model_path, env, log_stats=True) as (url, child):
            modules = load_adapters(url, adapters)
            cells = mixed_cells(url, modules, plan, watch=True)
            tables.append([dataclasses.replace(c, target=f"{name}: {c.target}") for c in cells])
            if profile_s:
                n, c = max(plan.mixed_modules), plan.mixed_concurrency
                print(f"profile, {n} modules:")
                profile(
                    child.pid,
                    settings.cache_dir / f"prof-{name.replace('=', '')}-{n}.txt",
                    profile_s,
                    functools.partial(
                        measure, url, "profiled", modules[:n], c, 3 * c, plan.max_tokens
                    ),
                    WATCH + WATCH_ADAPTERS,
                )
    return tables


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "?",
    )
    import torch
    import vllm

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} cores ({cpu}), {gpu}; vllm {vllm.__version__}, torch {torch.__version__}"
    )


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["serving", "variants", "mixed"], default="serving")
    parser.add_argument("--concurrency", type=_ints, default=[1, 4, 16])
    parser.add_argument("--per-slot", type=int, default=2, help="requests per concurrency slot")
    parser.add_argument("--min-requests", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--mixed", type=_ints, default=[1, 8, 64, 256], help="distinct modules")
    parser.add_argument("--mixed-concurrency", type=int, default=16)
    parser.add_argument("--skip", default="", help="comma-separated: gateway, peft, mixed")
    parser.add_argument(
        "--variants", default="all,targets,shape", help=f"of {[*VARIANTS, *VLLM_OPS]}"
    )
    parser.add_argument("--profile-seconds", type=int, default=0, help="with --only mixed")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    plan = Plan(
        args.concurrency,
        args.per_slot,
        args.min_requests,
        args.max_tokens,
        args.mixed,
        args.mixed_concurrency,
    )
    settings = Settings()  # ports, Redis and cache folder from LORAMEM_* as for the system
    model_path = prepare_base_model(settings)
    wanted = max([1] + ([] if "mixed" in skip else plan.mixed_modules))
    adapters = make_adapters(settings, model_path, settings.cache_dir / "bench-adapters", wanted)
    print(f"machine: {machine()}")
    print(
        f"engine: dtype {settings.engine_dtype}, max_loras {settings.engine_max_loras}, "
        f"max_cpu_loras {settings.engine_max_cpu_loras}, "
        f"lora modules {settings.engine_lora_modules}; module: rank {settings.training.rank}, "
        f"{settings.training.targets}, top {settings.training.top_layers} layers; "
        f"max_tokens {plan.max_tokens}",
        flush=True,
    )
    if args.only == "mixed":
        for table in mixed_variant_cells(
            settings, model_path, adapters, plan, args.variants.split(","), args.profile_seconds
        ):
            print("\n" + markdown_table(table, {plan.mixed_concurrency: table[0]}, "engine, mixed"))
        return
    if args.only == "variants":
        cells = variant_cells(settings, model_path, adapters, plan, args.variants.split(","))
        first = {max(plan.concurrency): cells[0]}
        print("\n" + markdown_table(cells, first, "engine setting"))
        return
    with engine(settings, model_path) as url:
        names = load_adapters(url, adapters)
        cells = engine_cells(url, "engine base", [settings.base_name], plan)
        cells += engine_cells(url, "engine 1 module", names[:1], plan)
        mixed = [] if "mixed" in skip else mixed_cells(url, names, plan)
        if "gateway" not in skip:
            cells += gateway_cells(settings, plan)
    if "peft" not in skip:
        cells += peft_cells(settings, model_path, adapters, plan)
    base = {c.concurrency: c for c in cells if c.target == "engine base"}
    print("\n" + markdown_table(sorted(cells, key=lambda c: c.concurrency), base, "target"))
    if mixed:
        print("\n" + markdown_table(mixed, {plan.mixed_concurrency: mixed[0]}, "engine, mixed"))


if __name__ == "__main__":
    main()
