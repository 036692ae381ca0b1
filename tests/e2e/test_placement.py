"""Placement on two real engines: with placement sized to the engines' slots, each module
version resides (in the engine worker's own LoRA cache) only on the engine the gateway
placed it on, and a hot set that fits the slots is served with no adapter load after
warm-up.

Two engines of 2 slots each, 6 random-weight modules, a hot set of 4, the real gateway
routing by explicit module name. Two engines start in about two minutes on 2 cores, more
than the default run can spare, so it runs with LORAMEM_E2E_PLACEMENT=1
(`bench/placement_real.py` measures the same at issue 16's size).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from evaluation.engine_harness import make_adapters
from evaluation.placement_harness import Gateway, drive, engine_cache, publish_modules
from loramem.base_model import prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.names import module_id, served_name
from loramem.registry import Registry
from loramem.settings import Settings
from tests.e2e.support import spawn, wait_http
from tests.e2e.test_resolver import stop_engine
from tests.services import redis_db_url

pytestmark = pytest.mark.skipif(
    os.environ.get("LORAMEM_E2E_PLACEMENT") != "1",
    reason="two engines take minutes to start: LORAMEM_E2E_PLACEMENT=1 runs it",
)

REDIS_URL = redis_db_url(11)
PORTS = (18400, 18401)
ENGINES = [f"http://127.0.0.1:{port}" for port in PORTS]
KEY = "placement-key"
TENANT = "e2e-placement"
SLOTS = 2


@pytest.fixture(scope="module")
def settings() -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        engine_max_cpu_loras=SLOTS,
        engine_max_loras=SLOTS,
        engine_api_key=KEY,
        engine_urls=",".join(ENGINES),
        gateway_port=18410,
        retire_grace_s=1.0,
        ingest_embed_process=False,
    )


@pytest.fixture(scope="module")
def engines(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    model_path = prepare_base_model(settings)
    children: list[subprocess.Popen] = []
    try:
        for i, port in enumerate(PORTS):  # both start at once; each has its own folder
            own = settings.model_copy(
                update={"engine_adapter_cache_dir": tmp_path_factory.mktemp(f"engine-{i}")}
            )
            children.append(spawn(engine_command(own, model_path, port), engine_env(own)))
        for url, child in zip(ENGINES, children, strict=True):
            wait_http(url + "/health", settings.engine_start_timeout_s, child)
        yield
    finally:
        for child in children:
            stop_engine(child)
        redis.Redis.from_url(REDIS_URL).flushdb()


def test_modules_reside_only_where_placed_and_a_fitting_hot_set_stops_loading(
    settings: Settings, engines: None, tmp_path: Path
) -> None:
    model_path = prepare_base_model(settings)
    paths = make_adapters(settings, model_path, tmp_path, 6)
    modules = publish_modules(Registry.from_settings(settings), TENANT, paths)
    hot = modules[:4]  # what the two engines' slots hold

    def ask(names: list[str]) -> None:
        asyncio.run(drive(gateway.url, TENANT, names, concurrency=2, max_tokens=2))

    with Gateway(settings) as gateway:
        ask(modules + hot * 3)  # every module once, then the hot set
        time.sleep(3.0)  # a reconciler pass (every 2 s) sizes the placement to the demand
        ask(hot)  # each hot module once more, on the engine placed now
        before = [engine_cache(url) for url in ENGINES]
        ask(hot * 4)
        after = [engine_cache(url) for url in ENGINES]
        pool = gateway.app.state.pool
        placement = {m: pool.placement(served_name(module_id(TENANT, m), 1)) for m in hot}
    for url, start, end in zip(ENGINES, before, after, strict=True):
        assert end.loads == start.loads, f"{url} loaded adapters after warm-up"
        assert end.evictions == start.evictions
        assert all(url in pool.placement(name) for name in end.resident), (url, end.resident)
    resident = {name for state in after for name in state.resident}
    assert resident == {served_name(module_id(TENANT, m), 1) for m in hot}
    assert sorted(len(p) for p in placement.values()) == [1, 1, 1, 1]
    assert {e for p in placement.values() for e in p} == set(ENGINES)  # two on each
