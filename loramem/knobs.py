"""The training knobs, defined once.

`TrainingKnobs` is the one definition: the settings' defaults (LORAMEM_TRAINING__<KNOB>),
the request's per-job overrides (`PartialTrainingKnobs`, every knob optional) and the
trainer's config are all this model. `VersionRecipe` is what travels with every module
version (recipe.json): how it was made, trained, converted from a PEFT variant, or merged.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

TargetName = Literal["all-linear", "attention", "feed-forward"]


@dataclass(frozen=True)
class LoraTarget:
    peft: tuple[str, ...]  # the Llama layer names PEFT puts LoRA on
    vllm: tuple[str, ...]  # vLLM's runtime (packed) names of the same layers


LORA_TARGETS: dict[TargetName, LoraTarget] = {
    "all-linear": LoraTarget(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"),
    ),
    "attention": LoraTarget(
        ("q_proj", "k_proj", "v_proj", "o_proj"), ("self_attn.qkv_proj", "self_attn.o_proj")
    ),
    "feed-forward": LoraTarget(
        ("gate_proj", "up_proj", "down_proj"), ("mlp.gate_up_proj", "mlp.down_proj")
    ),
}


def first_lora_layer(total_layers: int, top_layers: int) -> int:
    """The lowest decoder layer carrying LoRA when only the top `top_layers` do (0: all)."""
    return 0 if top_layers <= 0 else max(0, total_layers - top_layers)


class TrainingKnobs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(default=8, ge=1, le=256)  # LoRA rank r
    alpha: float | None = Field(default=None, gt=0)  # LoRA alpha; None: equal to rank (paper)
    targets: TargetName = "feed-forward"  # LORA_TARGETS
    # Top decoder layers that carry LoRA (0 = all). The frozen layers below are run once
    # per job instead of every step: on SmolLM2-135M, 12 of 30 layers train 10 facts about
    # twice as fast as all 30 and recall them as well (bench/trainer_speed.py).
    top_layers: int = Field(default=12, ge=0)
    # "dora" (weight-decomposed) and "pissa" (SVD initialisation) are trained as such and
    # published as the plain LoRA vLLM serves (trainer/variants.py): exact for PiSSA, a
    # rank-2r fit for DoRA. The settings' default must stay "lora".
    variant: Literal["lora", "dora", "pissa"] = "lora"
    # Batch 16 at lr 1e-2 against 32 at 5e-3, 48 PhoneBook facts: half the time to the loss
    # target (111 s against 218 s) and recall 0.96 against 0.83 (bench/trainer_speed.py).
    learning_rate: float = Field(default=1e-2, gt=0, le=1)  # AdamW peak (cosine to 10%)
    max_steps: int = Field(default=60, ge=1, le=5000)  # hard stop on optimizer steps
    target_loss: float = Field(default=0.05, ge=0)  # stop once the answer loss is below
    batch_size: int = Field(default=16, ge=1, le=512)  # examples per optimizer step
    seed: int = 0  # same facts + knobs -> same adapter
    # Phrasings of each fact trained (loramem/fact_forms.py: the first that apply). All of
    # them (10) against the first 2, 20 PhoneBook facts side by side: paraphrases never
    # trained 0.89 against 0.64, POST -> published 166 against 131 s; CounterFact question
    # forms 0.55 both (docs/RESULTS.md, "Questions phrased unlike the stored sentence").
    questions_per_fact: int = Field(default=10, ge=1, le=10)
    data_format: Literal["qa", "rewrite", "mixed"] = "qa"  # trainer/synth.py FORMATS
    # Recall on the module's own facts a version needs to be published; 0 publishes
    # whatever recall is reached (capacity experiments).
    recall_gate: float = Field(default=0.95, ge=0, le=1)

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else float(self.rank)

    @property
    def served_rank(self) -> int:
        """The rank of the plain LoRA adapter that is published (DoRA: a rank-2r fit)."""
        return 2 * self.rank if self.variant == "dora" else self.rank

    def with_overrides(self, overrides: dict[str, Any]) -> TrainingKnobs:
        """These knobs with a job's overrides; a new rank without its own alpha keeps
        alpha = r, as the paper did."""
        values = {**self.model_dump(), **overrides}
        if "rank" in overrides and "alpha" not in overrides:
            values["alpha"] = None
        resolved = TrainingKnobs(**values)
        return resolved.model_copy(update={"alpha": resolved.lora_alpha})


def _partial(model: type[BaseModel]) -> type[BaseModel]:
    """The same fields and limits, each optional with no default: what a request may set."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        optional = copy.copy(info)
        optional.default = None
        annotation: Any = info.annotation
        fields[name] = (annotation | None, optional)
    return create_model(
        "PartialTrainingKnobs",
        __config__=ConfigDict(extra="forbid"),
        __doc__="Per-job training knobs; each one left out takes its LORAMEM_TRAINING__ setting.",
        **fields,
    )


if TYPE_CHECKING:  # a model built at run time is opaque to mypy; callers only dump it
    PartialTrainingKnobs = BaseModel
else:
    PartialTrainingKnobs = _partial(TrainingKnobs)


class MergeRecipe(BaseModel):
    combination: str  # loramem's name: "ties", "linear" or "cat"
    peft_combination: str  # what PEFT's add_weighted_adapter was asked for
    sources: dict[str, int]  # source module -> the version merged
    weights: dict[str, float]
    density: float | None  # TIES only


class VersionRecipe(BaseModel):
    """How a module version was made. One schema for every kind of version."""

    made_by: Literal["trained", "converted", "merged"]  # converted: a dora/pissa variant
    base_model: str
    rank: int  # the published adapter's LoRA rank
    training: TrainingKnobs | None = None  # trained and converted versions
    merge: MergeRecipe | None = None  # merged versions

    @model_validator(mode="after")
    def _one_origin(self) -> VersionRecipe:
        if (self.merge is None) == (self.made_by == "merged"):
            raise ValueError("a merged version has a merge recipe, and only it")
        if (self.training is None) == (self.made_by != "merged"):
            raise ValueError("a trained or converted version has training knobs, and only it")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2)
