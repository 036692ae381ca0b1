"""The CPU LoRA fix (loramem/vllm_cpu_lora.py) against vLLM's own torch ops: the same
result on rows with an adapter, no LoRA term on rows without one."""

from __future__ import annotations

import importlib

import pytest
import torch

from loramem import vllm_cpu_lora as fixed

SLOTS, RANK, IN, OUT = 3, 4, 12, 10


@pytest.fixture(scope="module")
def vllm_ops():  # type: ignore[no-untyped-def]
    """vLLM's original functions, even if the plugin already patched this process."""
    from vllm.lora.ops.torch_ops import lora_ops

    return importlib.reload(lora_ops)


def _case(seed: int, indices: list[int]) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    rows = len(indices)
    x = torch.randn(rows, IN, generator=gen)
    a = torch.randn(SLOTS, 1, RANK, IN, generator=gen)
    b = torch.randn(SLOTS, 1, OUT, RANK, generator=gen)
    return x, a, b, torch.tensor(indices)


@pytest.mark.parametrize("indices", [[0, 0, 0, 0], [2, 0, 1, 2, 0], [1]])
def test_rows_with_an_adapter_get_what_vllm_computes(vllm_ops, indices: list[int]) -> None:  # type: ignore[no-untyped-def]
    x, a, b, idx = _case(1, indices)
    ours, theirs = torch.zeros(len(indices), RANK), torch.zeros(len(indices), RANK)
    fixed.bgmv_shrink(x, a, ours, idx, 0.5)
    vllm_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    torch.testing.assert_close(ours, theirs)

    shrunk = torch.randn(len(indices), RANK)
    base = torch.randn(len(indices), OUT + 6)
    ours, theirs = base.clone(), base.clone()
    fixed.bgmv_expand_slice(shrunk, b, ours, idx, 3, OUT)
    vllm_ops.bgmv_expand_slice(shrunk, b, theirs, idx, 3, OUT)
    torch.testing.assert_close(ours, theirs)

    ours, theirs = base.clone(), base.clone()
    fixed.bgmv_expand(shrunk, b, ours, idx, add_inputs=True)
    vllm_ops.bgmv_expand(shrunk, b, theirs, idx, add_inputs=True)
    torch.testing.assert_close(ours, theirs)


def test_rows_without_an_adapter_get_no_lora_term() -> None:
    x, a, b, idx = _case(2, [0, -1, 2, -1])
    shrunk = torch.full((4, RANK), 7.0)
    fixed.bgmv_shrink(x, a, shrunk, idx)
    assert torch.count_nonzero(shrunk[[1, 3]]) == 0
    torch.testing.assert_close(shrunk[0], x[0] @ a[0, 0].T)
    torch.testing.assert_close(shrunk[2], x[2] @ a[2, 0].T)

    base = torch.randn(4, OUT)
    out = base.clone()
    fixed.bgmv_expand(shrunk, b, out, idx, add_inputs=True)
    torch.testing.assert_close(out[[1, 3]], base[[1, 3]])  # untouched
    torch.testing.assert_close(out[2], base[2] + shrunk[2] @ b[2, 0].T)


@pytest.mark.parametrize("adapters", [1, 2, 5, 16])
def test_many_adapters_in_one_step(vllm_ops, adapters: int) -> None:  # type: ignore[no-untyped-def]
    """Several modules in one step (one grouped product): every row gets its own
    adapter's product, as vLLM computes it, and rows without one get none, whatever the
    order of the rows and with empty slots between; the step's grouping, kept across
    calls, is not reused for other indices."""
    slots, rows = 2 * adapters, 3 * adapters + 5
    gen = torch.Generator().manual_seed(adapters)
    used = torch.randperm(slots, generator=gen)[:adapters]  # some slots stay empty
    idx = used[torch.randint(adapters, (rows,), generator=gen)]
    idx[torch.randperm(rows, generator=gen)[:4]] = -1
    x = torch.randn(rows, IN, generator=gen)
    a = torch.randn(slots, 1, RANK, IN, generator=gen)
    b = torch.randn(slots, 1, OUT, RANK, generator=gen)
    has = idx >= 0

    ours, theirs = torch.full((rows, RANK), 7.0), torch.zeros(rows, RANK)
    fixed.bgmv_shrink(x, a, ours, idx, 0.5)
    vllm_ops.bgmv_shrink(x, a, theirs, idx, 0.5)
    torch.testing.assert_close(ours[has], theirs[has])
    assert torch.count_nonzero(ours[~has]) == 0

    shrunk, base = torch.randn(rows, RANK, generator=gen), torch.randn(rows, OUT + 6)
    ours, theirs = base.clone(), base.clone()
    fixed.bgmv_expand_slice(shrunk, b, ours, idx, 3, OUT)
    vllm_ops.bgmv_expand_slice(shrunk, b, theirs, idx, 3, OUT)
    torch.testing.assert_close(ours[has], theirs[has])
    torch.testing.assert_close(ours[~has], base[~has])  # untouched

    idx[:] = idx.roll(1)  # the next step, in the same buffer: a new grouping
    ours, theirs = torch.zeros(rows, RANK), torch.zeros(rows, RANK)
    fixed.bgmv_shrink(x, a, ours, idx, 0.5)
    vllm_ops.bgmv_shrink(x, a, theirs, idx.clamp(min=0), 0.5)
    torch.testing.assert_close(ours[idx >= 0], theirs[idx >= 0])


def test_the_plugin_replaces_the_ops_the_cpu_wrapper_calls() -> None:
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    fixed.register()
    for name, function in fixed.REPLACEMENTS.items():
        assert getattr(lora_ops, name) is function  # what sgmv_* (prefill) calls
        assert getattr(punica_cpu, name) is function  # what the decode path calls


@pytest.mark.parametrize("name", sorted(fixed.REPLACEMENTS))
def test_a_changed_vllm_layout_fails_closed_on_cpu(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A vLLM whose CPU ops moved must not serve LoRA with its own (wrong) ops."""
    from vllm.lora.punica_wrapper import punica_cpu

    monkeypatch.setattr(fixed, "_on_cpu", lambda: True)
    monkeypatch.delattr(punica_cpu, name)
    with pytest.raises(fixed.LoraOpsChanged, match=f"punica_cpu.{name}.*VLLM_PLUGINS="):
        fixed.register()


def test_a_missing_module_fails_closed_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setattr(fixed, "_on_cpu", lambda: True)
    from vllm.lora.ops import torch_ops

    monkeypatch.setitem(sys.modules, "vllm.lora.ops.torch_ops.lora_ops", None)
    monkeypatch.delattr(torch_ops, "lora_ops", raising=False)
    with pytest.raises(fixed.LoraOpsChanged, match="cannot import"):
        fixed.register()


def test_other_platforms_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from vllm.lora.punica_wrapper import punica_cpu

    monkeypatch.setattr(fixed, "_on_cpu", lambda: False)
    monkeypatch.delattr(punica_cpu, "bgmv_shrink")
    fixed.register()  # nothing to fix: GPU kernels skip rows without an adapter
