"""The real engine fetches module versions from Redis through loramem's resolver: with its
own empty folder it serves a version published after it started, asked by name with no
load call from anyone, and after a restart on an empty folder it refills itself on demand.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from loramem import keys
from loramem.adapter_store import checksum, read_files
from loramem.base_model import prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.names import module_id, served_name
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from tests.e2e.support import spawn, wait_http
from tests.recipes import TRAINED
from tests.services import redis_db_url

REDIS_URL = redis_db_url(12)
PORT = 18150
ENGINE = f"http://127.0.0.1:{PORT}"
HEADERS = {"Authorization": "Bearer resolver-key"}
MODULE = module_id("e2e", "facts-a")  # what engines and Redis know a module by


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=REDIS_URL,
        engine_port=PORT,
        engine_api_key="resolver-key",
        engine_adapter_cache_dir=tmp_path_factory.mktemp("engine-cache"),
        engine_lora_modules="all",
    )


@pytest.fixture(scope="module")
def registry(settings: Settings) -> Iterator[Registry]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    yield Registry.from_settings(settings)
    redis.Redis.from_url(REDIS_URL).flushdb()


def make_adapter(model_path: Path, folder: Path) -> dict[str, bytes]:
    """A real PEFT LoRA of the base model (random weights: what it says does not matter)."""
    model = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=8, lora_alpha=8, target_modules=["down_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return read_files(folder)


def publish(registry: Registry, module: str, files: dict[str, bytes]) -> str:
    # The module record POST /facts would have made; publish fills in the rest.
    registry.modules._redis.hsetnx(keys.module(module), "tenant", "e2e")
    version = registry.modules.next_version(module)
    info = VersionInfo(module, version, "e2e", [], 1.0, checksum(files), TRAINED)
    registry.modules.publish(info, files)
    return info.served  # the name engines know it by, its checksum's digest in it


def start_engine(settings: Settings, model_path: Path) -> subprocess.Popen:
    engine = spawn(engine_command(settings, model_path), engine_env(settings))
    wait_http(f"{ENGINE}/health", settings.engine_start_timeout_s, engine)
    return engine


def stop_engine(engine: subprocess.Popen) -> None:
    os.killpg(engine.pid, signal.SIGTERM)
    try:
        engine.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(engine.pid, signal.SIGKILL)
        engine.wait()


def ask(name: str) -> httpx.Response:
    body = {"model": name, "prompt": "The capital of France is", "max_tokens": 4}
    return httpx.post(f"{ENGINE}/v1/completions", json=body, headers=HEADERS, timeout=300)


def resolver_loads() -> float:
    for line in httpx.get(f"{ENGINE}/metrics", timeout=10).text.splitlines():
        if line.startswith("loramem_resolver_loads_total "):
            return float(line.split()[1])
    raise AssertionError("the engine exports no loramem_resolver_loads_total")


def test_the_resolver_plugin_is_installed() -> None:
    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert "loramem.vllm_resolver:register" in {p.value for p in plugins}, (
        "reinstall loramem (pip install -e .) so vLLM finds its resolver"
    )


def test_an_engine_fetches_versions_published_after_it_started_and_refills_after_restart(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    cache = settings.engine_adapter_cache_dir
    assert cache is not None
    model_path = prepare_base_model(settings)
    engine = start_engine(settings, model_path)
    try:
        name = publish(registry, MODULE, make_adapter(model_path, tmp_path / "a"))
        reply = ask(name)  # nobody loaded it: the engine resolves the name itself
        assert reply.status_code == 200, reply.text
        assert reply.json()["model"] == name
        assert (
            checksum(read_files(cache / MODULE / "v1"))
            == registry.modules.version(MODULE, 1).checksum
        )
        digest = registry.modules.version(MODULE, 1).checksum
        assert ask(served_name(MODULE, 7, digest)).status_code == 404  # not published
        assert ask(served_name("nothing", 1, digest)).status_code == 404
        assert ask(f"{MODULE}@v1").status_code == 404  # no digest: not a served name
        # The active number under another digest (a Redis restored from an older snapshot
        # handed it out again for other weights): never resolved to these weights.
        assert ask(served_name(MODULE, 1, "0" * 64)).status_code == 404
        assert resolver_loads() == 1
        newer = publish(registry, MODULE, make_adapter(model_path, tmp_path / "b"))
    finally:
        stop_engine(engine)
    shutil.rmtree(cache)  # a new pod: an empty folder of its own
    cache.mkdir()
    engine = start_engine(settings, model_path)
    try:
        assert ask(name).status_code == 404  # replaced: never served again
        reply = ask(newer)
        assert reply.status_code == 200, reply.text
        assert (cache / MODULE / "v2" / "adapter_model.safetensors").exists()
        assert not (cache / MODULE / "v1").exists()
        assert resolver_loads() == 1
    finally:
        stop_engine(engine)
