"""The serving benchmark's pure pieces, evaluation/serving_stats.py (no engine, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.serving_stats import (
    QUESTIONS,
    Cell,
    Plan,
    chat_body,
    markdown_table,
    percentile,
    summarize,
)


@pytest.mark.parametrize("q", [0, 50, 90, 99, 100])
def test_percentile_matches_numpy(q: float) -> None:
    samples = [0.3, 1.2, 0.7, 5.0, 0.1, 2.2, 0.9]
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_of_nothing_is_nan() -> None:
    assert np.isnan(percentile([], 50))


def test_summary_and_table() -> None:
    base = summarize("engine base", 4, [1.0, 2.0, 3.0, 4.0], tokens=128, wall_s=4.0)
    lora = Cell("engine 1 module", 4, 4, 128, 8.0, 2.0, 4.0)
    assert (base.requests, base.tokens_per_s, base.p50_s) == (4, 32.0, 2.5)
    table = markdown_table([base, lora], {4: base}, "target").splitlines()
    assert table[0].startswith("| target | concurrency |")
    assert table[2] == "| engine base | 4 | 4 | 32.0 | 2.50 | 3.97 | 1.00 |"
    assert table[3].endswith("| 16.0 | 2.00 | 4.00 | 0.50 |")


def test_table_shows_the_engines_batching_when_sampled() -> None:
    one = Cell("1 modules", 16, 64, 2048, 32.0, 8.0, 9.0, running=15.8, waiting=0.2)
    many = Cell("64 modules", 16, 64, 2048, 64.0, 16.0, 17.0, running=4.0, waiting=12.0)
    table = markdown_table([one, many], {16: one}, "engine, mixed").splitlines()
    assert table[0].endswith("| tokens/s vs first | running | waiting |")
    assert table[1].count("|") == table[0].count("|")
    assert table[3] == "| 64 modules | 16 | 64 | 32.0 | 16.00 | 17.00 | 0.50 | 4.0 | 12.0 |"


def test_requests_and_body() -> None:
    plan = Plan(
        [1, 4, 16], per_slot=2, minimum=4, max_tokens=32, mixed_modules=[1], mixed_concurrency=16
    )
    assert [plan.requests(c) for c in plan.concurrency] == [4, 8, 32]
    body = chat_body("auto", QUESTIONS[0], 32)
    assert body["messages"][0]["content"] == QUESTIONS[0]
    assert (body["max_tokens"], body["ignore_eos"], body["temperature"]) == (32, True, 0)
