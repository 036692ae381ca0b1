"""A vLLM plugin that fixes the CPU LoRA ops: rows without an adapter get none, and each
adapter's product runs once over its own rows.

vLLM 0.32's CPU punica wrapper calls the torch ops in `vllm/lora/ops/torch_ops/lora_ops.py`.
Their `bgmv_*` functions start with `lora_weights[lora_indices_tensor]`, where a row
without an adapter has index -1, so:
- **wrong answers:** in a step that mixes such rows with adapter rows, the -1 rows get
  the adapter of the *last* slot (`max_loras - 1`), whichever request loaded it. A base
  request (or `rag`) served next to module requests is answered by another module, even
  another tenant's. The GPU kernels skip -1. `bench/lora_cpu_ops.py --check-base-rows`
  reproduces it on the real engine.
- **slow:** the gather copies the adapter's A or B matrix once per token, then runs one
  matrix-vector product per token (docs/RESULTS.md, "The engine's LoRA cost on CPU").

The replacements below compute, for each adapter present in the step, `x[rows] @ W.T`
over that adapter's rows only (one grouped product for all of them, the rows grouped once
per step), and leave -1 rows without a LoRA term. Everything else
(output slicing, `add_inputs`, the padding rules of `bgmv_expand`) is vLLM's own code,
kept as is. vLLM loads the plugin in every process through the `vllm.general_plugins`
entry point (pyproject.toml); `VLLM_PLUGINS=` (empty) turns it off for comparisons.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger("loramem.vllm_cpu_lora")


@dataclass(frozen=True)
class Grouping:
    """Which rows go to which adapter slot: the same for every wrapped layer of a step."""

    indices: torch.Tensor  # a copy of the step's row -> slot indices (-1: no adapter)
    counts: list[int]  # counts[0]: rows without an adapter; counts[s + 1]: rows on slot s
    present: list[int]  # slots with rows
    rows: torch.Tensor  # the rows with an adapter, sorted by slot
    ends: torch.Tensor  # int32, where each slot's rows end in `rows` (grouped_mm's offs)


_last: Grouping | None = None  # the step's grouping, kept across its layers' calls


def grouping(indices: torch.Tensor, slots: int) -> Grouping:
    """The rows grouped by slot, computed once per step: a step calls these ops a few times
    per wrapped layer with the same indices, and the grouping costs more than a product."""
    global _last
    last = _last
    if (
        last is not None
        and len(last.counts) == slots + 1
        and last.indices.shape == indices.shape
        and torch.equal(last.indices, indices)
    ):
        return last
    counts = torch.bincount(indices + 1, minlength=slots + 1).tolist()
    rows = torch.argsort(indices, stable=True)[counts[0] :]  # -1 sorts first: left out
    ends = torch.tensor(counts[1:], dtype=torch.int64).cumsum(0).to(torch.int32)
    present = [s for s in range(slots) if counts[s + 1]]
    _last = Grouping(indices.clone(), counts, present, rows, ends)
    return _last


def lora_product(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row i of the result is inputs[i] @ weights[indices[i]].T, or zeros where the
    index is negative (no adapter). `weights` is (slots, [1,] out, in)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    group = grouping(indices, weights.shape[0])
    if len(group.present) == 1 and not group.counts[0]:  # one adapter for every row
        return inputs @ weights[group.present[0]].to(dtype).T
    out = inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    if not group.present:
        return out
    # Several adapters, or rows without one: one grouped product over every slot, each
    # adapter's weights read once (an empty slot is an empty group). It beat a Python loop
    # over the adapters from two adapters up (`python -m bench.lora_cpu_ops --adapters N`,
    # docs/RESULTS.md, "Many modules on one engine").
    products = F.grouped_mm(
        inputs.index_select(0, group.rows), weights.to(dtype).transpose(1, 2), offs=group.ends
    )
    return out.index_copy_(0, group.rows, products)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    outputs = lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    outputs = lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1
    # The adapter and the model may pad their outputs differently (vLLM's comment).
    common_len = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    outputs = lora_product(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs


REPLACEMENTS = {
    "bgmv_shrink": bgmv_shrink,
    "bgmv_expand": bgmv_expand,
    "bgmv_expand_slice": bgmv_expand_slice,
}


class LoraOpsChanged(RuntimeError):
    """vLLM's CPU LoRA ops are not where this fix expects them: refuse to serve."""


def register() -> None:
    """vLLM's plugin hook. The sgmv_* (prefill) ops call the bgmv_* ones through their
    module's globals, and the CPU wrapper imported the bgmv_* ones by name: patch both.

    Fails closed on the CPU platform: vLLM's own ops there serve rows without an adapter
    with another request's adapter, so an engine this fix cannot patch must not start.
    vLLM loads general plugins before it reads its engine arguments, so whether LoRA is on
    is not known here: any CPU engine with this plugin refuses. Elsewhere (GPU kernels skip
    rows without an adapter) there is nothing to fix."""
    if not _on_cpu():
        return
    try:
        from vllm.lora.ops.torch_ops import lora_ops
        from vllm.lora.punica_wrapper import punica_cpu
    except ImportError as exc:
        raise LoraOpsChanged(_refusal(f"cannot import them ({exc})")) from exc
    missing = [
        f"{module.__name__}.{name}"
        for module in (lora_ops, punica_cpu)
        for name in REPLACEMENTS
        if not callable(getattr(module, name, None))
    ]
    if missing:
        raise LoraOpsChanged(_refusal("missing " + ", ".join(missing)))
    for name, function in REPLACEMENTS.items():
        setattr(lora_ops, name, function)
        setattr(punica_cpu, name, function)
    log.info("loramem's CPU LoRA ops are in place")


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _refusal(why: str) -> str:
    return (
        f"loramem's CPU LoRA fix cannot patch this vLLM's CPU LoRA ops ({why}). vLLM's own "
        "ops would answer requests without a module with another request's adapter, so the "
        "engine refuses to start. Use the vLLM version this fix was written for (0.32), or "
        "update loramem/vllm_cpu_lora.py; VLLM_PLUGINS= (empty) starts without the fix, "
        "knowingly."
    )
