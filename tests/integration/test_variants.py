"""DoRA and PiSSA adapters are published as plain LoRA, which is all vLLM loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from loramem.base_model import prepare_base_model
from loramem.settings import Settings
from trainer import train as training
from trainer import variants


@pytest.fixture(scope="module")
def model_path() -> Path:
    return prepare_base_model(Settings())


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


def _perturb(peft_model: PeftModel) -> None:
    """Stand in for training: move the low-rank factors away from their initial value."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.add_(0.02 * torch.randn_like(param))


@pytest.mark.parametrize("variant", ["pissa", "dora"])
def test_a_variant_is_published_as_plain_lora(
    variant: str, model_path: Path, tmp_path: Path
) -> None:
    config = Settings().training.with_overrides({"variant": variant, "rank": 4, "top_layers": 2})
    base, tokenizer = training.load_base(model_path)
    ids = torch.tensor([training.chat_prompt_ids(tokenizer, "Who wrote Hamlet?")])
    before = _logits(base, ids)
    trained = training.make_peft_model(base, config)
    variants.save_initial(trained, tmp_path / "initial")
    _perturb(trained)
    wanted = _logits(trained, ids)

    variants.save_servable(trained, tmp_path / "out", config, model_path, tmp_path / "initial")

    adapter_config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert adapter_config["use_dora"] is False
    assert adapter_config["init_lora_weights"] is True  # nothing vLLM would have to rebuild
    served = PeftModel.from_pretrained(training.load_base(model_path)[0], tmp_path / "out")
    got = _logits(served, ids)
    error = (got - wanted).abs().max().item()
    moved = (before - wanted).abs().max().item()
    if variant == "pissa":  # PEFT's conversion is exact
        assert error < 1e-3 * max(moved, 1.0)
    else:  # a rank-2r fit of DoRA: much closer to the trained model than the base is
        assert error < 0.2 * moved, (error, moved)
