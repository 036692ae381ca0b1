"""Several engines and a gateway for placement checks (bench/placement_real.py and
tests/e2e/test_placement.py): random-weight modules published to Redis, the gateway app
served from a thread, requests by explicit module name, and what each engine's own LoRA
cache holds and did (loramem/vllm_lora_cache.py on its /metrics).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from loramem import keys
from loramem.adapter_store import checksum, read_files
from loramem.engine import engine_headers
from loramem.errors import NotFound
from loramem.knobs import TrainingKnobs, VersionRecipe
from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo, stage_module
from loramem.settings import Settings
from server.app import create_app


@dataclass
class CacheState:
    loads: float
    load_seconds: float
    evictions: float
    resident: list[str]  # served names in the engine worker's LoRA cache


def publish_modules(registry: Registry, tenant: str, paths: list[Path]) -> list[str]:
    """The modules' client names; each published once (kept across runs) through the
    registry's publish transaction, with the module record POST /facts would make."""
    names = []
    recipe = VersionRecipe(
        made_by="trained", base_model="bench", rank=8, training=TrainingKnobs().with_overrides({})
    )
    for path in paths:
        name = path.name.replace("bench-", "m")
        module = module_id(tenant, name)
        names.append(name)
        try:
            if registry.modules.get(module).active_version:
                continue
        except NotFound:
            pass
        files = read_files(path)
        pipe = registry.modules._redis.pipeline()  # the module record POST /facts makes
        stage_module(pipe, tenant, module)
        pipe.sadd(keys.tenants(keys.bucket(tenant)), tenant)
        pipe.execute()
        registry.modules.publish(
            VersionInfo(module, 1, tenant, [], 1.0, checksum(files), recipe), files
        )
    return names


def engine_cache(url: str) -> CacheState:
    """The engine worker's LoRA cache, from the engine's own /metrics."""
    text = httpx.get(url + "/metrics", timeout=10).text
    loads = load_seconds = evictions = 0.0
    resident = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "loramem_engine_lora_loads_total":
                loads = sample.value
            elif sample.name == "loramem_engine_lora_load_seconds_total":
                load_seconds = sample.value
            elif sample.name == "loramem_engine_lora_evictions_total":
                evictions = sample.value
            elif sample.name == "loramem_engine_lora_resident_adapter":
                resident.append(sample.labels["adapter"])
    return CacheState(loads, load_seconds, evictions, sorted(resident))


def registered(url: str, api_key: str) -> list[str]:
    """Module versions the engine's server lists (more than its worker may hold)."""
    data = httpx.get(url + "/v1/models", headers=engine_headers(api_key), timeout=10).json()
    return sorted(m["id"] for m in data["data"] if "@v" in m["id"])


def empty(url: str, api_key: str) -> None:
    """Unload every module version from the engine (its server and its worker)."""
    for name in registered(url, api_key):
        httpx.post(
            url + "/v1/unload_lora_adapter",
            json={"lora_name": name},
            headers=engine_headers(api_key),
            timeout=60,
        )


class Gateway:
    """The real gateway app on a port, in a thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=settings.gateway_port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.gateway_port}"

    def __enter__(self) -> Gateway:
        self.thread.start()
        deadline = time.monotonic() + 300
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise SystemExit("the gateway did not start")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def drive(
    url: str, tenant: str, names: list[str], concurrency: int, max_tokens: int
) -> Counter[int]:
    """Ask for each name in turn (`concurrency` at once); requests served per engine."""
    served: Counter[int] = Counter()
    queue = list(reversed(names))
    headers = {"x-loramem-tenant": tenant}
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as http:

        async def one_client() -> None:
            while queue:
                name = queue.pop()
                body = {
                    "model": name,
                    "messages": [{"role": "user", "content": "Who are you?"}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                }
                reply = await http.post("/v1/chat/completions", json=body)
                if reply.status_code != 200:
                    raise SystemExit(f"{name}: {reply.status_code} {reply.text[:200]}")
                served[int(reply.headers["x-loramem-engine"])] += 1

        await asyncio.gather(*(one_client() for _ in range(concurrency)))
    return served
