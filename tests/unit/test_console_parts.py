"""The console's server-side pieces on their own: the hit ring (server/hits.py) and the
routing explanation (server/explain.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from loramem.names import served_name
from loramem.registry.facts import Fact
from router.index import Hit
from router.policy import ModuleScore
from router.router import RouteDecision
from server.explain import explain, on_first_chunk
from server.hits import HitCounter


class Clock:
    def __init__(self) -> None:
        self.now_s = 1_000_000.0

    def __call__(self) -> float:
        return self.now_s


def test_hits_are_counted_per_minute_per_tenant_and_module() -> None:
    clock = Clock()
    hits = HitCounter(window_s=600, bucket_s=60, clock=clock)
    hits.record("a", "m1")
    hits.record("a", "m1")
    hits.record("a", None)
    clock.now_s += 60
    hits.record("a", "m1")
    hits.record("b", "m1")  # another tenant's module of the same name

    series = {s.module: s for s in hits.of_tenant("a")}
    assert set(series) == {"m1", "base"}
    assert len(series["m1"].counts) == 10
    assert series["m1"].counts[-2:] == [2, 1] and series["m1"].total == 3
    assert series["base"].counts[-2:] == [1, 0]
    assert [s.total for s in hits.of_tenant("b")] == [1]
    assert hits.of_tenant("nobody") == []


def test_hits_leave_the_window_and_idle_series_are_dropped() -> None:
    clock = Clock()
    hits = HitCounter(window_s=300, bucket_s=60, clock=clock)
    hits.record("a", "old")
    clock.now_s += 240
    hits.record("a", "new")
    assert {s.module: s.counts for s in hits.of_tenant("a")} == {
        "new": [0, 0, 0, 0, 1],
        "old": [1, 0, 0, 0, 0],
    }
    clock.now_s += 60  # "old" is now 5 buckets back: out of a 5-bucket window
    hits.record("b", "x")  # a new series sweeps idle ones
    assert ("a", "old") not in hits._series
    assert [s.module for s in hits.of_tenant("a")] == ["new"]


def test_a_window_must_hold_whole_buckets() -> None:
    with pytest.raises(ValueError):
        HitCounter(window_s=100, bucket_s=60)


DECISION = RouteDecision(  # below the HTTP surface a module is known by its id
    target=served_name("t~m1", 3, "ab" * 32),
    module="t~m1",
    outcome="module",
    score=0.81,
    candidates=[Hit("f1", "t~m1", 0.81), Hit("f2", "t~m2", 0.42)],
    modules=[ModuleScore("t~m1", 0.83, 0.81), ModuleScore("t~m2", 0.42, 0.42)],
)


def test_the_explanation_names_module_version_candidates_and_fact_texts_by_name() -> None:
    asked: list[list[str]] = []

    def read(ids: list[str]) -> list[Fact]:
        asked.append(ids)
        return [Fact(id="f1", tenant="t", text="Ann's phone is 1", module="t~m1")]

    told = explain(DECISION, "lora", 0.55, read)
    assert asked == [["f1", "f2"]]
    assert (told.served, told.module, told.version, told.outcome) == ("m1@v3", "m1", 3, "module")
    assert [c.module for c in told.candidates] == ["m1", "m2"]
    assert [(f.id, f.module, f.text) for f in told.facts] == [
        ("f1", "m1", "Ann's phone is 1"),
        ("f2", "m2", None),
    ]

    base = explain(RouteDecision("SmolLM2", None, "base"), "rag", 0.55, lambda ids: [])
    assert (base.served, base.module, base.version, base.facts) == ("base", None, None, [])


def test_the_explanation_rides_on_the_first_json_chunk_only() -> None:
    lines = [
        b": keep-alive\n",
        b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n',
        b"\n",
        b'data: {"choices": [{"delta": {"content": "Hi"}}]}\n',
        b"data: [DONE]\n",
    ]

    async def stream() -> AsyncIterator[bytes]:
        for line in lines:
            yield line

    async def relay() -> list[bytes]:
        told = explain(DECISION, "lora", 0.55, lambda ids: [])
        return [line async for line in on_first_chunk(stream(), told)]

    out = asyncio.run(relay())
    assert len(out) == len(lines) and out[0] == lines[0] and out[2:] == lines[2:]
    first = json.loads(out[1][6:])
    assert first["loramem"]["served"] == "m1@v3"
    assert first["choices"] == [{"delta": {"role": "assistant"}}]
