"""Merged modules: the selection policy, naming and ranks, and PEFT's combination on a
tiny random model (no Redis, no engine)."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from loramem.errors import InvalidRequest
from loramem.names import module_name
from loramem.registry.merges import merge_is_current, merged_module_name, merged_rank
from router.index import Hit
from router.policy import aggregate, choose, merge_group
from trainer.merge import MergeRefused, check_shapes, combine

# ----------------------------------------------------------------------- policy


def ranked(*scores: tuple[str, float]):  # type: ignore[no-untyped-def]
    hits = [Hit(f"f{i}", module, score) for i, (module, score) in enumerate(scores)]
    return aggregate(hits, support_weight=0.0)


def test_a_close_second_module_joins_the_group_a_distant_one_does_not() -> None:
    scores = ranked(("a", 0.80), ("b", 0.75), ("c", 0.60))
    chosen = choose(scores, 0.55)
    assert chosen is not None
    assert merge_group(scores, chosen, 0.55, margin=0.1, max_modules=3) == ["a", "b"]
    assert merge_group(scores, chosen, 0.55, margin=0.3, max_modules=3) == ["a", "b", "c"]
    assert merge_group(scores, chosen, 0.55, margin=0.3, max_modules=2) == ["a", "b"]


def test_one_relevant_module_or_a_second_below_the_threshold_is_no_group() -> None:
    scores = ranked(("a", 0.80), ("b", 0.50))
    chosen = choose(scores, 0.55)
    assert chosen is not None
    assert merge_group(scores, chosen, 0.55, margin=1.0, max_modules=3) == []


def test_merged_names_ignore_order_and_depend_on_every_part_of_the_recipe() -> None:
    name = merged_module_name("t", ["a", "b"], "ties")
    assert name == merged_module_name("t", ["b", "a"], "ties", [1.0, 1.0])
    assert name.startswith("t~mx-") and len(module_name(name)) <= 48
    assert name != merged_module_name("u", ["a", "b"], "ties")
    assert name != merged_module_name("t", ["a", "b"], "cat")
    assert name != merged_module_name("t", ["a", "b"], "ties", [1.0, 0.5])
    assert merged_module_name("t", ["a", "b"], "ties", [1.0, 0.5]) == merged_module_name(
        "t", ["b", "a"], "ties", [0.5, 1.0]
    )


def test_a_merge_is_current_only_for_the_exact_source_versions() -> None:
    assert merge_is_current({"a": 1, "b": 2}, {"a": 1, "b": 2, "c": 5})
    assert not merge_is_current({"a": 1, "b": 2}, {"a": 2, "b": 2})  # a republished
    assert not merge_is_current({"a": 1, "b": 2}, {"a": 1})  # b retired
    assert not merge_is_current({}, {"a": 1})


def test_cat_stacks_ranks_the_others_refactor_at_what_the_engine_serves() -> None:
    assert merged_rank([8, 8], "cat", 16) == 16
    assert merged_rank([8, 8], "ties", 8) == 8 and merged_rank([8, 4], "linear", 16) == 12
    with pytest.raises(InvalidRequest):
        merged_rank([8, 8], "cat", 8)
    configs = [{"r": 8, "layers_to_transform": [1]}] * 2
    assert check_shapes(configs, "ties", max_rank=8) == 8
    assert check_shapes(configs, "linear", max_rank=16) == 16
    with pytest.raises(MergeRefused):
        check_shapes(configs, "cat", max_rank=8)
    with pytest.raises(MergeRefused):
        check_shapes([configs[0], {"r": 8, "layers_to_transform": [0]}], "ties", max_rank=8)


# -------------------------------------------------------------- PEFT combination


def _tiny_adapters(tmp_path, count: int):  # type: ignore[no-untyped-def]
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2,
    )  # fmt: skip
    folders = []
    for i in range(count):
        torch.manual_seed(i)
        model = get_peft_model(
            LlamaForCausalLM(config),
            LoraConfig(r=4, lora_alpha=4, target_modules=["down_proj"], init_lora_weights=False),
        )
        model.save_pretrained(str(tmp_path / f"a{i}"))
        folders.append(tmp_path / f"a{i}")
    torch.manual_seed(0)
    return LlamaForCausalLM(config), folders


def _delta(model, adapter: str):  # type: ignore[no-untyped-def]
    layer = model.base_model.model.model.layers[0].mlp.down_proj
    return layer.get_delta_weight(adapter)


@pytest.mark.parametrize("combination", ["cat", "linear", "ties"])
def test_peft_combines_the_sources_into_one_servable_adapter(tmp_path, combination) -> None:  # type: ignore[no-untyped-def]
    base, folders = _tiny_adapters(tmp_path, 2)
    model = combine(base, folders, [1.0, 1.0], combination, density=1.0, rank=8)
    merged, exact = _delta(model, "default"), _delta(model, "s0") + _delta(model, "s1")
    if combination == "ties":  # sign election and disjoint mean: not the plain sum
        assert merged.abs().sum() > 0 and not torch.allclose(merged, exact, atol=1e-3)
    else:  # cat, and linear at the summed rank, are the exact sum of the updates
        assert torch.allclose(merged, exact, atol=1e-4)
    model.save_pretrained(str(tmp_path / "out"), selected_adapters=["default"])
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["r"] == 8
