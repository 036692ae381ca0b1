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
