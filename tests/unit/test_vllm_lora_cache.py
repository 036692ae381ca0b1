"""The engine's LoRA cache counts (loramem/vllm_lora_cache.py) on vLLM's own worker LRU
manager: loads, evictions past max_cpu_loras, unloads, and what /metrics shows."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry, generate_latest

pytest.importorskip("vllm")

from vllm.lora.request import LoRARequest  # noqa: E402
from vllm.lora.worker_manager import LRUCacheWorkerLoRAManager  # noqa: E402

from loramem import vllm_lora_cache  # noqa: E402


class FakeLRU:
    """vLLM's LRUCacheLoRAModelManager, reduced to its cache of `capacity` ids."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ids: list[int] = []

    def list_adapters(self) -> dict[int, object]:
        return dict.fromkeys(self.ids)


def test_loads_evictions_and_unloads_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager_class = LRUCacheWorkerLoRAManager
    for name in ("add_adapter", "remove_adapter", "create_lora_manager"):  # restored after
        monkeypatch.setattr(manager_class, name, getattr(manager_class, name))
    monkeypatch.delattr(LRUCacheWorkerLoRAManager, "_loramem_stats", raising=False)

    def add(self: SimpleNamespace, request: SimpleNamespace) -> bool:  # vLLM's LRU, in short
        cache = self._adapter_manager
        if request.lora_int_id in cache.ids:
            cache.ids.remove(request.lora_int_id)
        elif len(cache.ids) >= cache.capacity:
            cache.ids.pop(0)
        cache.ids.append(request.lora_int_id)
        return True

    def remove(self: SimpleNamespace, adapter_id: int) -> bool:
        self._adapter_manager.ids.remove(adapter_id)
        return True

    monkeypatch.setattr(LRUCacheWorkerLoRAManager, "add_adapter", add)
    monkeypatch.setattr(LRUCacheWorkerLoRAManager, "remove_adapter", remove)
    metrics = CollectorRegistry()
    vllm_lora_cache.install(tmp_path, metrics)
    manager = LRUCacheWorkerLoRAManager.__new__(LRUCacheWorkerLoRAManager)
    manager._adapter_manager = FakeLRU(capacity=2)  # type: ignore[assignment]

    def ask(i: int) -> None:
        manager.add_adapter(LoRARequest(lora_name=f"m{i}@v1", lora_int_id=i, lora_path="/x"))

    for i in (1, 2, 1, 1, 3, 1):  # 3 evicts 2 (least recently used); 1 stays
        ask(i)
    manager.remove_adapter(3)
    stats = vllm_lora_cache.read_stats(tmp_path / vllm_lora_cache.STATS_FILE)
    assert stats is not None
    assert (stats["loads"], stats["evictions"], stats["unloads"]) == (3, 1, 1)
    assert stats["resident"] == ["m1@v1"]
    text = generate_latest(metrics).decode()
    assert "loramem_engine_lora_loads_total 3.0" in text
    assert 'loramem_engine_lora_resident_adapter{adapter="m1@v1"} 1.0' in text
