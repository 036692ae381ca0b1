"""The serving benchmark's prompts, plan and statistics (bench/serving.py drives the load).

Pure pieces, no engine and no model: the facts taught and the questions asked, the request
body, percentiles, one table cell per target and concurrency, and the markdown table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Invented people (not in the base model): the gateway section teaches these facts, and
# every target is asked the same questions about them.
FACTS = (
    "The phone number of Orla Quenby is 415-273-9918.",
    "The phone number of Tamsin Varga is 312-640-5527.",
    "The phone number of Idris Pelham is 206-818-3304.",
    "The phone number of Noor Castellan is 617-495-2286.",
)
QUESTIONS = (
    "What is the phone number of Orla Quenby?",
    "How can I reach Tamsin Varga by phone?",
    "What is Idris Pelham's phone number?",
    "Which number should I dial for Noor Castellan?",
)


def percentile(samples: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Cell:
    target: str
    concurrency: int
    requests: int
    tokens: int
    wall_s: float
    p50_s: float
    p99_s: float
    # The engine's own view while the cell ran (vLLM's num_requests_running / _waiting,
    # sampled), when the engine was asked to keep its stats: how many requests it batched.
    running: float | None = None
    waiting: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")


def summarize(
    target: str, concurrency: int, latencies_s: list[float], tokens: int, wall_s: float
) -> Cell:
    return Cell(
        target,
        concurrency,
        len(latencies_s),
        tokens,
        wall_s,
        percentile(latencies_s, 50),
        percentile(latencies_s, 99),
    )


def chat_body(model: str, question: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # vLLM (and peft_server) extension: equal-length answers
    }


def markdown_table(cells: list[Cell], baseline: dict[int, Cell], first: str) -> str:
    engine_view = any(c.running is not None for c in cells)
    extra = " running | waiting |" if engine_view else ""
    lines = [
        f"| {first} | concurrency | requests | tokens/s | p50 s | p99 s | tokens/s vs first |"
        + extra,
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|---:|" * engine_view,
    ]
    for c in cells:
        ratio = c.tokens_per_s / baseline[c.concurrency].tokens_per_s
        line = (
            f"| {c.target} | {c.concurrency} | {c.requests} | {c.tokens_per_s:.1f} | "
            f"{c.p50_s:.2f} | {c.p99_s:.2f} | {ratio:.2f} |"
        )
        if engine_view:
            line += f" {_mean(c.running)} | {_mean(c.waiting)} |"
        lines.append(line)
    return "\n".join(lines)


def _mean(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def requests_for(concurrency: int, per_slot: int, minimum: int) -> int:
    return max(minimum, concurrency * per_slot)


@dataclass(frozen=True)
class Plan:
    concurrency: list[int]
    per_slot: int  # requests per concurrency slot in a cell
    minimum: int  # at least this many requests in a cell
    max_tokens: int
    mixed_modules: list[int]
    mixed_concurrency: int

    def requests(self, concurrency: int) -> int:
        return requests_for(concurrency, self.per_slot, self.minimum)
