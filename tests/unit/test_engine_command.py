"""loramem's engine command line: which layers vLLM wraps for LoRA, and what it refuses."""

from __future__ import annotations

from pathlib import Path

from loramem.engine import engine_command, unserved_lora_shape
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
