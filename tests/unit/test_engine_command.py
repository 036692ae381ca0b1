"""loramem's engine command line: which layers vLLM wraps for LoRA, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import httpx

from loramem.engine import EngineClient, engine_command, engine_env, unserved_lora_shape
from loramem.settings import Settings


def test_engine_lora_modules_flags_and_refusals(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')
    everything = Settings(engine_lora_modules="all")
    knobs = {"targets": "feed-forward", "top_layers": 12}
    shape = Settings(engine_lora_modules="shape", training=knobs)
    assert "--lora-target-modules" not in engine_command(everything, tmp_path)
    names = engine_command(shape, tmp_path)
    names = names[names.index("--lora-target-modules") + 1 :]
    assert names[:2] == ["model.layers.18.mlp.gate_up_proj", "model.layers.18.mlp.down_proj"]
    assert len(names) == 24
    assert unserved_lora_shape(everything, "attention", 0) is None
    assert unserved_lora_shape(shape, "feed-forward", 12) is None
    assert unserved_lora_shape(shape, "feed-forward", 4) is None
    assert unserved_lora_shape(shape, "feed-forward", 0) is not None  # all 30 layers
    assert unserved_lora_shape(shape, "all-linear", 12) is not None


def test_the_engine_key_goes_in_the_environment_and_every_client_request() -> None:
    keyed = Settings(engine_api_key="sekret", engine_lora_modules="all")
    assert engine_env(keyed)["VLLM_API_KEY"] == "sekret"
    assert "sekret" not in engine_command(keyed, Path("/m"))  # `ps` shows the command
    assert "sekret" not in repr(keyed)
    seen: list[str | None] = []

    def engine(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": []})

    client = EngineClient("http://engine")
    client.http = httpx.Client(
        base_url="http://engine", headers=client.http.headers, transport=httpx.MockTransport(engine)
    )
    client.loaded_models()
    keyed_client = EngineClient("http://engine", api_key="sekret")
    keyed_client.http = httpx.Client(
        base_url="http://engine",
        headers=keyed_client.http.headers,
        transport=httpx.MockTransport(engine),
    )
    keyed_client.loaded_models()
    assert seen == [None, "Bearer sekret"]


def test_the_engine_gets_what_its_resolver_needs_by_environment(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://:pw@redis:6379/3", cache_dir=tmp_path)
    env = engine_env(settings)
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"  # vLLM asks resolvers only then
    assert env["LORAMEM_REDIS_URL"] == "redis://:pw@redis:6379/3"
    assert env["LORAMEM_ENGINE_ADAPTER_CACHE_DIR"] == str(tmp_path / "engine-adapters")
    assert env["LORAMEM_ENGINE_RESOLVER"] == "true"
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')
    assert "pw" not in " ".join(engine_command(settings, tmp_path))
    # The engine process reads the same settings back from that environment.
    seen = Settings(**{k[8:].lower(): v for k, v in env.items() if k.startswith("LORAMEM_")})
    assert seen.redis_url == settings.redis_url
    assert seen.engine_adapter_cache_dir == settings.engine_adapter_cache_dir


def test_resolver_loads_are_read_from_the_engines_metrics() -> None:
    text = (
        "# TYPE loramem_resolver_loads counter\nloramem_resolver_loads_total 3.0\n"
        "# TYPE loramem_resolver_load_seconds counter\nloramem_resolver_load_seconds_total 0.6\n"
    )
    client = EngineClient("http://engine")
    client.http = httpx.Client(
        base_url="http://engine",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text=text)),
    )
    assert client.resolver_loads() == (3.0, 0.6)
    client.http = httpx.Client(
        base_url="http://engine",
        transport=httpx.MockTransport(lambda request: httpx.Response(200, text="")),
    )
    assert client.resolver_loads() is None  # an engine without the resolver
