"""Publishing LoRA variants that vLLM cannot load as such.

vLLM serves plain LoRA only. A PiSSA adapter is converted exactly by PEFT itself (it needs
the adapter's initial state, saved before training). DoRA's magnitude rescaling is not a
low-rank update, so its effective weight change is fitted by a plain LoRA of rank 2r
through a truncated SVD: an approximation, whose served recall the eval reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import torch
from peft import LoraConfig, PeftModel
from peft.tuners.lora import LoraLayer

from loramem.knobs import TrainingKnobs
from trainer import train as training


def save_initial(peft_model: PeftModel, folder: Path) -> None:
    """PiSSA's starting point, which PEFT's conversion to plain LoRA subtracts."""
    config = cast(LoraConfig, peft_model.peft_config["default"])
    init = config.init_lora_weights
    config.init_lora_weights = True  # saved as plain LoRA, as PEFT's conversion expects
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    config.init_lora_weights = init


def save_servable(
    peft_model: PeftModel,
    folder: Path,
    config: TrainingKnobs,
    model_path: Path,
    initial: Path | None,
) -> None:
    """Save `peft_model` in `folder` as the plain LoRA adapter vLLM loads."""
    if config.variant == "pissa":
        assert initial is not None, "PiSSA needs its initial adapter (save_initial)"
        peft_model.save_pretrained(
            str(folder),
            safe_serialization=True,
            path_initial_model_for_weight_conversion=str(initial),
        )
    elif config.variant == "dora":
        _fit_plain_lora(peft_model, model_path, config).save_pretrained(
            str(folder), safe_serialization=True
        )
    else:
        peft_model.save_pretrained(str(folder), safe_serialization=True)


@torch.no_grad()
def _fit_plain_lora(peft_model: PeftModel, model_path: Path, config: TrainingKnobs) -> PeftModel:
    """A rank-2r plain LoRA whose update is the best rank-2r fit of the variant's update."""
    rank = config.served_rank
    merged: Any = peft_model.merge_and_unload()  # the variant's effective weights
    fitted_base, _ = training.load_base(model_path)
    plain = training.make_peft_model(
        fitted_base,
        config.model_copy(update={"variant": "lora", "rank": rank, "alpha": float(rank)}),
    )
    for name, module in plain.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        layer: Any = module  # PEFT types lora_A / lora_B loosely
        inner_name = name.removeprefix("base_model.model.")
        delta = merged.get_submodule(inner_name).weight - layer.get_base_layer().weight
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        layer.lora_B["default"].weight.copy_(u[:, :rank] * s[:rank])  # alpha = r: scale 1
        layer.lora_A["default"].weight.copy_(vh[:rank])
    return plain
