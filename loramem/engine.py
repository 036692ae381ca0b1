"""The vLLM engine: how to start it, and a small HTTP client for adapter residency."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loramem.adapter_store import AdapterRef
from loramem.errors import EngineUnavailable, NameTaken
from loramem.knobs import LORA_TARGETS, TargetName, first_lora_layer
from loramem.settings import Settings

# The engine resolver's metric names (loramem/vllm_resolver.py, which imports vLLM and so
# cannot be imported here).
LOADS_METRIC = "loramem_resolver_loads"
LOAD_SECONDS_METRIC = "loramem_resolver_load_seconds"


def engine_command(settings: Settings, model_path: Path, port: int | None = None) -> list[str]:
    """vLLM's own OpenAI server with LoRA on and runtime adapter loading allowed."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        settings.base_name,
        "--host",
        settings.engine_host,
        "--port",
        str(port or settings.engine_port),
        "--dtype",
        settings.engine_dtype,
        "--max-model-len",
        str(settings.engine_max_model_len),
        "--enable-lora",
        "--max-lora-rank",
        str(max_lora_rank(settings)),
        "--max-loras",
        str(settings.engine_max_loras),
        "--max-cpu-loras",
        str(settings.engine_max_cpu_loras),
        "--disable-log-stats",
        # GET /load: the requests it is answering now, which a trainer on its cores reads
        # to pause between steps (trainer/answer_pause.py); one counter, no stats.
        "--enable-server-load-tracking",
        *_lora_target_args(settings, model_path),
    ]


def _lora_target_args(settings: Settings, model_path: Path) -> list[str]:
    """--lora-target-modules for settings.engine_lora_modules ("all": vLLM's default)."""
    if settings.engine_lora_modules == "all":
        return []
    knobs = settings.training
    suffixes = LORA_TARGETS[knobs.targets].vllm
    if settings.engine_lora_modules == "targets":
        return ["--lora-target-modules", *(s.split(".")[-1] for s in suffixes)]
    config = json.loads((model_path / "config.json").read_text())
    total = int(config["num_hidden_layers"])
    first = first_lora_layer(total, knobs.top_layers)
    names = [f"model.layers.{i}.{s}" for i in range(first, total) for s in suffixes]
    return ["--lora-target-modules", *names]


def unserved_lora_shape(settings: Settings, targets: TargetName, top_layers: int) -> str | None:
    """Why the engines would drop part of a module of this shape; None when they serve it all.

    With engine_lora_modules other than "all", vLLM wraps only some layers and silently
    ignores an adapter's weights elsewhere, so such a module must be refused up front.
    """
    mode = settings.engine_lora_modules
    if mode == "all":
        return None
    served_targets = settings.training.targets
    if not set(LORA_TARGETS[targets].vllm) <= set(LORA_TARGETS[served_targets].vllm):
        return f"the engines serve LoRA on {served_targets} layers only, not {targets}"
    served = settings.training.top_layers
    if mode == "shape" and served and not 0 < top_layers <= served:
        return f"the engines serve LoRA on the top {served} layers only, not {top_layers or 'all'}"
    return None


def max_lora_rank(settings: Settings) -> int:
    """The largest adapter rank the engine is started to accept."""
    return _max_lora_rank(max(settings.engine_max_lora_rank or 0, settings.training.rank))


def _max_lora_rank(rank: int) -> int:
    """vLLM accepts only some max ranks; take the smallest one that fits ours."""
    for allowed in (8, 16, 32, 64, 128, 256):
        if rank <= allowed:
            return allowed
    return rank


def engine_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.engine_kv_cache_gib))
    env.setdefault("HF_HUB_OFFLINE", "1")
    # The resolver (loramem/vllm_resolver.py) runs inside the engine and reads these
    # settings from its environment: Redis (its URL carries the password, kept off the
    # command line) and its own cache folder.
    env["LORAMEM_ENGINE_RESOLVER"] = "true" if settings.engine_resolver else "false"
    env["LORAMEM_REDIS_URL"] = settings.redis_url
    env["LORAMEM_ENGINE_ADAPTER_CACHE_DIR"] = str(settings.engine_adapter_cache_dir)
    if settings.engine_api_key:
        # vLLM then answers /v1/* (chat, completions, load_lora_adapter) only with this key;
        # in the environment, not on the command line, where `ps` would show it.
        env["VLLM_API_KEY"] = settings.engine_api_key
    return env


# vLLM's server closes a connection left idle for 5 s (VLLM_HTTP_TIMEOUT_KEEP_ALIVE), the
# same time httpx keeps one for reuse: a request could go out on a connection the engine was
# closing and fail with "Server disconnected"; the gateway then answered 503 "no engine is
# reachable" and marked the engine down (seen in CI). Engine clients drop theirs first.
ENGINE_KEEPALIVE_EXPIRY_S = 2.0


def engine_http_limits() -> httpx.Limits:
    """httpx's default pool, but idle connections are dropped before the engine drops them."""
    return httpx.Limits(
        max_connections=100,
        max_keepalive_connections=20,
        keepalive_expiry=ENGINE_KEEPALIVE_EXPIRY_S,
    )


def engine_headers(api_key: str | None) -> dict[str, str]:
    """What every request to an engine carries: its key, when it has one."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class EngineClient:
    """Synchronous client for the engine's adapter endpoints (trainer and CLI side)."""

    def __init__(self, base_url: str, timeout_s: float = 60.0, api_key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_s,
            headers=engine_headers(api_key),
            limits=engine_http_limits(),
        )

    def healthy(self) -> bool:
        try:
            return self.http.get("/health", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def loaded_models(self) -> set[str]:
        response = self._call("GET", "/v1/models")
        return {m["id"] for m in response.json()["data"]}

    def load_adapter(self, ref: AdapterRef, fresh: bool = False) -> None:
        """`fresh`: a version being published, whose name no engine may know yet; an
        engine that has it already holds other weights under it (NameTaken)."""
        response = self._call(
            "POST",
            "/v1/load_lora_adapter",
            json={"lora_name": ref.name, "lora_path": str(ref.path)},
        )
        if response.status_code == 400 and "already been loaded" in response.text:
            if fresh:
                raise NameTaken(f"{self.base_url} already serves {ref.name}")
            return  # loading an existing version is idempotent
        if response.status_code != 200:
            raise EngineUnavailable(f"engine refused {ref.name}: {response.text[:300]}")

    def resolver_loads(self) -> tuple[float, float] | None:
        """(versions fetched, seconds spent) by the engine's resolver, read from its
        /metrics; None when it has no resolver or does not answer."""
        try:
            text = self.http.get("/metrics", timeout=2.0).text
        except httpx.HTTPError:
            return None
        samples = {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
        count = samples.get(f"{LOADS_METRIC}_total")
        seconds = samples.get(f"{LOAD_SECONDS_METRIC}_total")
        return None if count is None or seconds is None else (count, seconds)

    def answering(self) -> int | None:
        """The chat and completion requests the engine is answering now (vLLM's /load);
        None when it does not say (an engine started without load tracking, or down)."""
        try:
            response = self.http.get("/load", timeout=1.0)
            return int(response.json()["server_load"]) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    def unload_adapter(self, name: str) -> None:
        self._call("POST", "/v1/unload_lora_adapter", json={"lora_name": name})

    def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise EngineUnavailable(f"engine at {self.base_url} unreachable: {exc}") from exc

    def close(self) -> None:
        self.http.close()
