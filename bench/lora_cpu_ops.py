"""Minimal reproduction: vLLM's CPU LoRA ops copy every adapter weight once per token.

    .venv/bin/python -m bench.lora_cpu_ops [--tokens 16,256,1024] [--threads 2] [--adapters 1]

vLLM's CPU punica wrapper (vllm/lora/punica_wrapper/punica_cpu.py) calls the torch ops in
vllm/lora/ops/torch_ops/lora_ops.py. Each of bgmv_shrink, bgmv_expand and
bgmv_expand_slice (and the sgmv_* prefill ops, which expand the per-sequence indices to
per-token ones and call them) starts with

    selected_loras = lora_weights[lora_indices_tensor]      # (tokens, out, in): a copy
    outputs = torch.einsum("bi, boi -> bo", inputs, selected_loras)

so a batch of T tokens materialises T copies of the A and B matrices of every slice, then
runs T matrix-vector products. The work grows with tokens x weight size, not with the
number of distinct adapters, and it is memory-bound. This script times, for one decoder
layer of SmolLM2-135M repeated over its 30 layers (qkv, o, gate_up, down; rank 8; one
adapter for every token, as when all requests use the same module):
- `base`: the layer's own linear layers (x @ W.T), the work LoRA is added to;
- `vllm ops`: vLLM's shrink + expand ops exactly as PunicaWrapperCPU.add_lora_linear
  calls them (a float32 buffer, then shrink per slice, then expand_slice per slice);
- `grouped`: the same result computed per distinct adapter (x[rows] @ A.T @ B.T) in a
  Python loop over the adapters, which is what the GPU kernels do and what loramem's fix
  did before it took one grouped product for all adapters.
- `loramem ops`: the same calls as `vllm ops`, to loramem's fix (loramem/vllm_cpu_lora.py),
  which the engine loads as a vLLM plugin.
`--adapters N` spreads the tokens round-robin over N adapters (N slots), as a step of
requests on N different modules.
It checks that `grouped` and `loramem ops` give vLLM's result before timing.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

HIDDEN, INTERMEDIATE, KV, LAYERS, RANK, MAX_LORAS = 576, 1536, 192, 30, 8, 4
# (name, input size, output slices) of one SmolLM2 decoder layer as vLLM packs it.
LINEARS = (
    ("qkv_proj", HIDDEN, (HIDDEN, KV, KV)),
    ("o_proj", HIDDEN, (HIDDEN,)),
    ("gate_up_proj", HIDDEN, (INTERMEDIATE, INTERMEDIATE)),
    ("down_proj", INTERMEDIATE, (HIDDEN,)),
)
Layer = tuple[int, tuple[int, ...], torch.Tensor, list[torch.Tensor], list[torch.Tensor]]


def make_layer(size_in: int, slices: tuple[int, ...], slots: int = MAX_LORAS) -> Layer:
    weight = torch.randn(sum(slices), size_in) * 0.02
    # vLLM's stacked layout: (max_loras, 1, rank, in) for A, (max_loras, 1, out, rank) for B.
    a = [torch.randn(slots, 1, RANK, size_in) * 0.02 for _ in slices]
    b = [torch.randn(slots, 1, out, RANK) * 0.02 for out in slices]
    return size_in, slices, weight, a, b


def vllm_lora(
    x: torch.Tensor, y: torch.Tensor, layer: Layer, indices: torch.Tensor, fixed: bool = False
) -> None:
    """PunicaWrapperCPU.add_lora_linear's calls, to vLLM's ops or to loramem's fix."""
    if fixed:
        from loramem.vllm_cpu_lora import bgmv_expand_slice, bgmv_shrink
    else:
        from vllm.lora.ops.torch_ops.lora_ops import bgmv_expand_slice, bgmv_shrink

    _, slices, _, a, b = layer
    buffers = [torch.zeros((x.size(0), RANK), dtype=torch.float32) for _ in slices]
    for buffer, a_i in zip(buffers, a, strict=True):
        bgmv_shrink(x, a_i, buffer, indices, 1.0)
    offset = 0
    for buffer, b_i, size in zip(buffers, b, slices, strict=True):
        bgmv_expand_slice(buffer, b_i, y, indices, offset, size, True)
        offset += size


def grouped_lora(x: torch.Tensor, y: torch.Tensor, layer: Layer, indices: torch.Tensor) -> None:
    _, slices, _, a, b = layer
    for lora in indices.unique().tolist():
        if lora < 0:
            continue  # no adapter on these rows
        rows = (indices == lora).nonzero().squeeze(1)
        xs = x.index_select(0, rows)
        offset = 0
        for a_i, b_i, size in zip(a, b, slices, strict=True):
            delta = (xs @ a_i[lora, 0].T) @ b_i[lora, 0].T
            y[:, offset : offset + size].index_add_(0, rows, delta)
            offset += size


KINDS = {
    "vllm ops": vllm_lora,
    "loramem ops": lambda x, y, layer, indices: vllm_lora(x, y, layer, indices, fixed=True),
    "grouped": grouped_lora,
}


def run_all(layers: list[Layer], kind: str, tokens: int, adapters: int = 1) -> Callable[[], None]:
    """One decoder layer's linear layers (`base`) or their LoRA terms; `time_s` counts it
    LAYERS times, for an engine step over all 30 layers."""
    xs = {size_in: torch.randn(tokens, size_in) for size_in, *_ in layers}
    ys = [torch.zeros(tokens, sum(s)) for _, s, *_ in layers]
    indices = torch.arange(tokens) % adapters  # round-robin over the adapters' slots

    def step() -> None:
        for layer, y in zip(layers, ys, strict=True):
            x = xs[layer[0]]
            if kind == "base":
                torch.matmul(x, layer[2].T, out=y)
            else:
                KINDS[kind](x, y, layer, indices)

    return step


def check_equal(layers: list[Layer]) -> None:
    """Same numbers from every kind, so the timing compares equal work."""
    slots = layer_slots(layers)
    for layer in layers:
        indices = torch.tensor([0, 1, 0, 2, 3] + list(range(slots)))
        x = torch.randn(len(indices), layer[0])
        want = torch.zeros(len(indices), sum(layer[1]))
        vllm_lora(x, want, layer, indices)
        for kind in ("grouped", "loramem ops"):
            got = torch.zeros(len(indices), sum(layer[1]))
            KINDS[kind](x, got, layer, indices)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def layer_slots(layers: list[Layer]) -> int:
    return int(layers[0][3][0].shape[0])


def time_s(step: Callable[[], None], repeat: int) -> float:
    """The fastest of `repeat` runs, times LAYERS (`step` is one decoder layer): on shared
    cores the slower runs include someone else's work."""
    step()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return best * LAYERS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", default="16,256,1024", help="tokens in one engine step")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=100, help="runs of one layer; the fastest")
    parser.add_argument("--adapters", type=int, default=1, help="distinct adapters in a step")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    slots = max(MAX_LORAS, args.adapters)
    layers = [make_layer(size_in, slices, slots) for _, size_in, slices in LINEARS]

    check_equal(layers)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, rank {RANK}, "
        f"{args.adapters} adapters in the step"
    )
    print(
        "| tokens in step | base linears ms | vLLM LoRA ops ms | grouped LoRA ms "
        "| loramem ops ms | vLLM / loramem |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for tokens in (int(t) for t in args.tokens.split(",")):
        base, ops, grouped, ours = (
            time_s(run_all(layers, kind, tokens, args.adapters), args.repeat) * 1000
            for kind in ("base", "vllm ops", "grouped", "loramem ops")
        )
        print(
            f"| {tokens} | {base:.1f} | {ops:.1f} | {grouped:.1f} | {ours:.1f} | {ops / ours:.1f} |"
        )


if __name__ == "__main__":
    main()
