"""Placement on real engines: two vLLM CPU engines, 40 modules, the real gateway routing by
explicit module name, three placements side by side in one run.

    flock /tmp/loramem-engine.lock .venv/bin/python -m bench.placement_real

Two engines each start with `--max-cpu-loras 8` (the worker's adapter cache) and
`--max-loras 8` (adapters in one batch: as many as the cache, so no request waits for a
batch slot and every load counted is a read from disk), each with its own empty cache
folder and loramem's resolver on: no shared volume, every adapter is fetched from Redis on
its first request. 40 random-weight modules of the default shape (the serving cost depends
on the shape only) are published to Redis through the registry's publish transaction.

Per placement, with a fresh gateway (`server.app.create_app`, in this process) and both
engines emptied first: a warm-up asks every module once, then `--warmup` requests of the
workload, then `--requests` counted ones at `--concurrency`. The workload: a hot set of
`--hot` modules (16, what two engines' 8 slots hold), each counted request for one of
them, uniformly at random (seeded). Figures per engine, read from the engine itself
(loramem/vllm_lora_cache.py on its /metrics): requests served, adapter loads from disk
and evictions in the counted phase, loads per request, adapters resident in its cache at
the end, and how many of those are placed elsewhere (the gateway's own placement).

Placements: "spread" (no placement: every version on every engine, the least busy
serves: a plain load balancer), "hash" (rendezvous hashing alone, one engine per
version), "slots" (rendezvous sized to the engines' slots, LORAMEM_PLACEMENT_SLOTS, the
default).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from evaluation.engine_harness import make_adapters, process
from evaluation.placement_harness import (
    Gateway,
    drive,
    empty,
    engine_cache,
    publish_modules,
    registered,
)
from loramem.base_model import prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.names import module_id
from loramem.registry import Registry
from loramem.settings import Settings
from server.placement import placed

TENANT = "placebench"
API_KEY = "placement-bench"
PLACEMENTS: dict[str, dict[str, float]] = {  # name -> gateway settings
    "spread": {"placement_slots": 0, "placement_rate_per_replica": 1e-9},
    "hash": {"placement_slots": 0},
    "slots": {},
}


@dataclass
class EngineFigures:
    requests: int
    loads: int
    load_seconds: float
    evictions: int
    resident: list[str]
    registered: list[str]
    off_placement: int  # resident adapters placed on another engine
    registered_off: int  # names its server still lists that are placed elsewhere


def engine_name(registry: Registry, name: str) -> str:
    """The engine-side name (with its digest) of the bench tenant's module `name`, v1."""
    return registry.modules.version(module_id(TENANT, name), 1).served


def run_placement(
    registry: Registry,
    label: str,
    base: Settings,
    engines: list[str],
    modules: list[str],
    args: argparse.Namespace,
) -> tuple[list[EngineFigures], float]:
    for url in engines:
        empty(url, API_KEY)
    settings = base.model_copy(
        update={
            "engine_urls": ",".join(engines),
            "gateway_port": args.gateway_port,
            "retire_grace_s": 2.0,
            "ingest_embed_process": False,
            **PLACEMENTS[label],
        }
    )
    rng = random.Random(args.seed)
    hot = rng.sample(modules, args.hot)
    warm = rng.sample(modules, len(modules)) + [rng.choice(hot) for _ in range(args.warmup)]
    counted = [rng.choice(hot) for _ in range(args.requests)]
    with Gateway(settings) as gateway:
        asyncio.run(drive(gateway.url, TENANT, warm, args.concurrency, args.max_tokens))
        before = [engine_cache(url) for url in engines]
        started = time.monotonic()
        served = asyncio.run(drive(gateway.url, TENANT, counted, args.concurrency, args.max_tokens))
        seconds = time.monotonic() - started
        after = [engine_cache(url) for url in engines]
        time.sleep(settings.retire_grace_s + 5.0)  # the reconciler's unloads after its grace
        pool = gateway.app.state.pool
        figures = []
        for i, url in enumerate(engines):
            tenant_served = [engine_name(registry, m) for m in modules]
            listed = [n for n in registered(url, API_KEY) if n in tenant_served]
            figures.append(
                EngineFigures(
                    requests=served[i],
                    loads=int(after[i].loads - before[i].loads),
                    load_seconds=after[i].load_seconds - before[i].load_seconds,
                    evictions=int(after[i].evictions - before[i].evictions),
                    resident=after[i].resident,
                    registered=listed,
                    off_placement=sum(url not in pool.placement(n) for n in after[i].resident),
                    registered_off=sum(url not in pool.placement(n) for n in listed),
                )
            )
    return figures, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", type=int, default=40)
    parser.add_argument("--hot", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=80)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=2)
    parser.add_argument("--slots", type=int, default=8, help="each engine's --max-cpu-loras")
    parser.add_argument("--ports", default="18320,18321")
    parser.add_argument("--gateway-port", type=int, default=18330)
    parser.add_argument("--placements", default="spread,hash,slots")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    base = Settings(
        engine_max_cpu_loras=args.slots,
        engine_max_loras=args.slots,
        engine_api_key=API_KEY,
    )
    registry = Registry.from_settings(base)
    model_path = prepare_base_model(base)
    paths = make_adapters(base, model_path, base.cache_dir / "bench-adapters", args.modules)
    modules = publish_modules(registry, TENANT, paths)
    ports = [int(p) for p in args.ports.split(",")]
    engines = [f"http://127.0.0.1:{port}" for port in ports]
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folders:
        started = time.monotonic()

        def start(i: int) -> None:
            settings = base.model_copy(
                update={"engine_adapter_cache_dir": Path(folders) / f"engine-{i}"}
            )
            command = engine_command(settings, model_path, ports[i])
            child = process(
                f"placement-engine-{i}", command, engine_env(settings), engines[i] + "/health", 900
            )
            child.__enter__()
            stack.push(child)

        with ThreadPoolExecutor(len(engines)) as starting:
            list(starting.map(start, range(len(engines))))
        print(f"{len(engines)} engines up in {time.monotonic() - started:.0f} s", flush=True)
        hot = random.Random(args.seed).sample(modules, args.hot)  # run_placement's draw
        homes = Counter(placed(engine_name(registry, m), engines, 1)[0] for m in hot)
        split = "/".join(str(homes[url]) for url in engines)
        print(
            f"\n{args.modules} modules, hot set {args.hot} (seed {args.seed}; rendezvous hashing "
            f"alone puts {split} of it on the engines), {args.requests} counted requests "
            f"at concurrency {args.concurrency}, max_tokens {args.max_tokens}, "
            f"{args.slots} slots per engine (cpu {os.cpu_count()})\n"
        )
        print(
            "| placement | engine | requests | loads (mean load) | evictions | loads per request "
            "| resident (worker cache) | resident placed elsewhere | listed by the server "
            "(placed elsewhere) | counted phase |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for label in args.placements.split(","):
            figures, seconds = run_placement(registry, label, base, engines, modules, args)
            for i, f in enumerate(figures):
                per_request = f.loads / f.requests if f.requests else 0.0
                mean_ms = 1000 * f.load_seconds / f.loads if f.loads else 0.0
                print(
                    f"| {label} | {i} | {f.requests} | {f.loads} ({mean_ms:.0f} ms) "
                    f"| {f.evictions} | {per_request:.3f} | {len(f.resident)} | {f.off_placement} "
                    f"| {len(f.registered)} ({f.registered_off}) | {seconds:.0f} s |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
