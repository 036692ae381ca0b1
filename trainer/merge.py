"""Merged modules: PEFT's weighted combination of published modules, built as a job.

A question that spans modules ("the numbers of A and B") has no single module that knows
the whole answer. A merged module combines the sources' published adapters with PEFT's
`add_weighted_adapter` and is served like any module. It is not trained and not gated:
its facts belong to its sources (bench/merge.py measures what merging keeps). Each
version records the source versions it was built from, so it goes stale as soon as a
source publishes again or is retired.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from peft import PeftModel

from loramem.adapter_store import read_files
from loramem.engine import max_lora_rank
from loramem.errors import LoramemError
from loramem.knobs import MergeRecipe, VersionRecipe
from loramem.names import module_name
from loramem.registry.jobs import Job
from loramem.registry.merges import merged_rank
from trainer import train as training
from trainer.context import TrainerContext
from trainer.outcomes import Artifact, JobRefused

# Our names -> PEFT's combination_type. `ties` and `linear` work on each layer's weight
# update (B @ A) and refactor it by SVD: PEFT's plain "ties" and "linear" combine the A
# and B factors separately, and since two adapters' factors share no basis, their
# products mix noise in (bench/merge.py measured 0/16 facts recalled either way).
PEFT_COMBINATION = {"ties": "ties_svd", "linear": "svd", "cat": "cat"}
MERGED = "default"  # PEFT saves the adapter of this name at the folder's top level


class MergeRefused(JobRefused):
    """The merge cannot be built as asked (a source is gone, the rank does not fit)."""


def check_shapes(configs: list[dict[str, Any]], combination: str, max_rank: int) -> int:
    """The merged rank, after refusing what PEFT or the engine would reject."""
    try:
        rank = merged_rank([int(c["r"]) for c in configs], combination, max_rank)
    except LoramemError as exc:
        raise MergeRefused(exc.message) from exc
    layers = {json.dumps(c.get("layers_to_transform")) for c in configs}
    if len(layers) > 1:
        raise MergeRefused("the sources adapt different layers")
    return rank


def combine(
    base: Any,
    adapter_dirs: list[Path],
    weights: list[float],
    combination: str,
    density: float,
    rank: int,
) -> PeftModel:
    """The sources as adapters of one base model, plus their combination named MERGED."""
    names = [f"s{i}" for i in range(len(adapter_dirs))]
    model = PeftModel.from_pretrained(base, str(adapter_dirs[0]), adapter_name=names[0])
    for name, folder in zip(names[1:], adapter_dirs[1:], strict=True):
        model.load_adapter(str(folder), adapter_name=name)
    model.add_weighted_adapter(
        names,
        weights,
        MERGED,
        combination_type=PEFT_COMBINATION[combination],  # type: ignore[arg-type]
        svd_rank=rank if combination != "cat" else None,
        density=density if combination == "ties" else None,
    )
    return model


def build_merge(ctx: TrainerContext, job: Job) -> Artifact:
    """The merge job: combine the sources' active versions into one adapter."""
    registry, settings = ctx.registry, ctx.settings
    spec = registry.merges.get(job.module)
    shown = [module_name(s) for s in spec.sources]  # progress is what the tenant sees
    registry.jobs.skip_to_publishing(job.id, {"phase": "merging", "sources": shown})
    try:
        versions = registry.merges.source_versions(spec.tenant, spec.sources)
    except LoramemError as exc:  # a source was retired or replaced by something foreign
        raise MergeRefused(exc.message) from exc
    refs = [ctx.store.materialize(m, versions[m]) for m in spec.sources]
    configs = [json.loads((r.path / "adapter_config.json").read_text()) for r in refs]
    rank = check_shapes(configs, spec.combination, max_lora_rank(settings))
    base, _tokenizer = training.load_base(ctx.model_path)
    model = combine(
        base, [r.path for r in refs], spec.weights, spec.combination, settings.merge_density, rank
    )
    with tempfile.TemporaryDirectory() as scratch:
        model.save_pretrained(scratch, selected_adapters=[MERGED])
        files = read_files(Path(scratch))
    recipe = VersionRecipe(
        made_by="merged",
        base_model=settings.base_model,
        rank=rank,
        merge=MergeRecipe(
            combination=spec.combination,
            peft_combination=PEFT_COMBINATION[spec.combination],
            sources=versions,
            weights=dict(zip(spec.sources, spec.weights, strict=True)),
            density=settings.merge_density if spec.combination == "ties" else None,
        ),
    )
    # No facts: the router indexes facts under their sources only. Not gated: what merging
    # keeps is measured by bench/merge.py.
    return Artifact(spec.name, files, recipe, fact_ids=[], recall=float("nan"), sources=versions)
