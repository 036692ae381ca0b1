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
over that adapter's rows only, and leave -1 rows without a LoRA term. Everything else
(output slicing, `add_inputs`, the padding rules of `bgmv_expand`) is vLLM's own code,
kept as is. vLLM loads the plugin in every process through the `vllm.general_plugins`
entry point (pyproject.toml); `VLLM_PLUGINS=` (empty) turns it off for comparisons.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

log = logging.getLogger("loramem.vllm_cpu_lora")


# Up to this many adapters in a step, one product per adapter in Python is cheapest; above
# it one grouped call (torch's grouped_mm) is. 16 rows on 16 adapters, SmolLM2's MLP
# shapes, one thread: per-adapter loop 264-308 us, grouped_mm 111-144 us; 4 adapters:
# loop 89-98 us, grouped 121-128 us (/tmp benchmark noted in docs/RESULTS.md, "Many
# modules on one engine").
LOOP_MAX_ADAPTERS = 4


def lora_product(
    inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Row i of the result is inputs[i] @ weights[indices[i]].T, or zeros where the
    index is negative (no adapter). `weights` is (slots, [1,] out, in)."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    inputs = inputs.to(dtype)
    slots = weights.shape[0]
    # counts[0]: rows without an adapter (index -1); counts[s + 1]: rows on slot s.
    counts = torch.bincount(indices + 1, minlength=slots + 1).tolist()
    present = [s for s in range(slots) if counts[s + 1]]
    if len(present) == 1 and not counts[0]:  # one adapter for every row: the common case
        return inputs @ weights[present[0]].to(dtype).T
    out = inputs.new_zeros((inputs.shape[0], weights.shape[1]))
    if len(present) <= LOOP_MAX_ADAPTERS:
        for slot in present:
            rows = (indices == slot).nonzero().squeeze(1)
            out.index_copy_(0, rows, inputs.index_select(0, rows) @ weights[slot].to(dtype).T)
        return out
    # Many adapters (many modules in one step): rows sorted by slot, the rows without an
    # adapter (first after sorting) left out, one grouped product over every slot, each
    # adapter's weights read once (empty slots are empty groups).
    rows = torch.argsort(indices, stable=True)[counts[0] :]
    ends = torch.tensor(counts[1:], dtype=torch.int64).cumsum(0).to(torch.int32)
    products = F.grouped_mm(
        inputs.index_select(0, rows), weights.to(dtype).transpose(1, 2), offs=ends
    )
    return out.index_copy_(0, rows, products)


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
