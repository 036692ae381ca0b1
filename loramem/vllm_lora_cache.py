"""What the engine's own LoRA cache does: adapters resident, loads from disk, evictions.

vLLM keeps two levels of adapters. Its OpenAI server remembers every name it was asked to
load (what `GET /v1/models` lists, and what the resolver fetched), but the engine's worker
holds only `--max-cpu-loras` of them in memory (`LRUCacheWorkerLoRAManager`): a request
for an adapter it evicted reads the folder from disk again, silently. Those reloads are
what placement is meant to avoid, and vLLM counts none of them, so this module wraps the
worker manager's `add_adapter` and `remove_adapter` (vLLM's code runs unchanged) and
counts loads, load time, evictions (to make room) and unloads (asked for), with the
names resident.

The worker runs in vLLM's EngineCore process and `/metrics` is served by the API server
process, so the worker writes its figures to a small JSON file in the engine's own cache
folder (`LORAMEM_ENGINE_ADAPTER_CACHE_DIR`, one per engine), only when something changed,
and a prometheus_client collector in the API server reads it at scrape time. Installed by
`loramem.vllm_resolver.register` (the same vLLM plugin entry point) in every engine
process; each part only acts in the process that has it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

STATS_FILE = "engine-lora-cache.json"  # in the engine's adapter cache folder
COUNTERS = [  # (metric, documentation, key in the file)
    (
        "loramem_engine_lora_loads",
        "Adapters read from disk into the engine's LoRA cache (first use or after eviction).",
        "loads",
    ),
    (
        "loramem_engine_lora_load_seconds",
        "Time the engine spent reading adapters into its LoRA cache.",
        "load_seconds",
    ),
    (
        "loramem_engine_lora_evictions",
        "Adapters the engine's LoRA cache dropped to make room (max_cpu_loras).",
        "evictions",
    ),
    (
        "loramem_engine_lora_unloads",
        "Adapters unloaded on request (POST /v1/unload_lora_adapter).",
        "unloads",
    ),
]


class CacheStats:
    """The worker's counts; written to `path` (atomically) whenever they change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loads = 0
        self.load_seconds = 0.0
        self.evictions = 0
        self.unloads = 0
        self.names: dict[int, str] = {}  # vLLM's adapter int id -> served name
        self.resident: list[str] = []
        self._lock = threading.Lock()

    def loaded(self, adapter_id: int, name: str, seconds: float) -> None:
        with self._lock:
            self.names[adapter_id] = name
            self.loads += 1
            self.load_seconds += seconds

    def changed(self, resident_ids: set[int], evicted: int = 0, unloaded: int = 0) -> None:
        with self._lock:
            self.evictions += evicted
            self.unloads += unloaded
            self.resident = sorted(self.names.get(i, str(i)) for i in resident_ids)
            self.write()

    def as_dict(self) -> dict[str, Any]:
        return {
            "loads": self.loads,
            "load_seconds": self.load_seconds,
            "evictions": self.evictions,
            "unloads": self.unloads,
            "resident": self.resident,
            "pid": os.getpid(),
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_suffix(f".{os.getpid()}.part")
        part.write_text(json.dumps(self.as_dict()))
        os.replace(part, self.path)  # a reader sees the old or the new file, whole


def read_stats(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class CacheStatsCollector(Collector):
    """Exports the worker's file on the API server's /metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        stats = read_stats(self.path)
        if stats is None:
            return
        for name, documentation, key in COUNTERS:
            yield CounterMetricFamily(name, documentation, value=stats[key])
        yield GaugeMetricFamily(
            "loramem_engine_lora_resident",
            "Adapters in the engine's LoRA cache now.",
            value=len(stats["resident"]),
        )
        # At most max_cpu_loras series: the cache's own bound.
        names = GaugeMetricFamily(
            "loramem_engine_lora_resident_adapter",
            "1 for each adapter in the engine's LoRA cache now.",
            labels=["adapter"],
        )
        for name in stats["resident"]:
            names.add_metric([name], 1)
        yield names


def install(cache_dir: Path, metrics: CollectorRegistry = REGISTRY) -> None:
    """Wrap vLLM's worker LoRA manager and export its counts (both are harmless in a
    process that does not use them)."""
    from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager

    path = cache_dir / STATS_FILE
    try:
        metrics.register(CacheStatsCollector(path))
    except ValueError:  # installed already in this process (its names are taken)
        pass
    if getattr(LRUCacheWorkerLoRAManager, "_loramem_stats", None) is not None:
        return
    stats = CacheStats(path)
    create = LRUCacheWorkerLoRAManager.create_lora_manager
    add_adapter = LRUCacheWorkerLoRAManager.add_adapter
    remove_adapter = LRUCacheWorkerLoRAManager.remove_adapter

    def counted_create(self: LRUCacheWorkerLoRAManager, *args: Any, **kwargs: Any) -> Any:
        model = create(self, *args, **kwargs)
        stats.changed(set())  # a fresh engine: no file left from the folder's last one
        return model

    def counted_add(self: LRUCacheWorkerLoRAManager, lora_request: Any) -> bool:
        before = self.list_adapters()
        started = time.perf_counter()
        loaded = add_adapter(self, lora_request)
        if lora_request.lora_int_id in before:
            return loaded  # a hit: every step of every request comes here
        seconds = time.perf_counter() - started
        stats.loaded(lora_request.lora_int_id, lora_request.lora_name, seconds)
        after = self.list_adapters()
        stats.changed(after, evicted=len(before - after))
        return loaded

    def counted_remove(self: LRUCacheWorkerLoRAManager, adapter_id: int) -> bool:
        removed = remove_adapter(self, adapter_id)
        stats.changed(self.list_adapters(), unloaded=1 if removed else 0)
        return removed

    LRUCacheWorkerLoRAManager.create_lora_manager = counted_create  # type: ignore[method-assign]
    LRUCacheWorkerLoRAManager.add_adapter = counted_add  # type: ignore[method-assign]
    LRUCacheWorkerLoRAManager.remove_adapter = counted_remove  # type: ignore[method-assign,assignment]
    LRUCacheWorkerLoRAManager._loramem_stats = stats  # type: ignore[attr-defined]
