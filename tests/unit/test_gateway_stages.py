"""The gateway's per-stage timing (server/metrics.py): what the overhead benchmark reads."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.limits import IngestPool
from server.metrics import (
    INGEST_STAGE_METRIC_NAME,
    STAGE_METRIC_NAME,
    GatewayMetrics,
    TimedEmbedder,
)


def observed(metrics: GatewayMetrics, stage: str) -> tuple[float, float]:
    count = metrics.registry.get_sample_value(f"{STAGE_METRIC_NAME}_count", {"stage": stage})
    total = metrics.registry.get_sample_value(f"{STAGE_METRIC_NAME}_sum", {"stage": stage})
    return count or 0.0, total or 0.0


def test_the_query_embedder_is_timed_as_the_embed_stage(fake_embedder) -> None:  # type: ignore[no-untyped-def]
    metrics = GatewayMetrics()
    timed = TimedEmbedder(fake_embedder, metrics)
    assert timed.dim == fake_embedder.dim
    vectors = timed.embed(["Orla Quenby's phone", "grass"])
    assert np.array_equal(vectors, fake_embedder.embed(["Orla Quenby's phone", "grass"]))
    count, total = observed(metrics, "embed")
    assert count == 1 and total > 0
    assert observed(metrics, "route") == (0.0, 0.0)


def test_a_stage_is_timed_when_it_fails_too() -> None:
    metrics = GatewayMetrics()
    with pytest.raises(ValueError), metrics.stage("budget"):
        raise ValueError("Redis said no")
    assert observed(metrics, "budget")[0] == 1


def ingest_observed(metrics: GatewayMetrics, stage: str) -> float:
    name = f"{INGEST_STAGE_METRIC_NAME}_count"
    return metrics.registry.get_sample_value(name, {"stage": stage}) or 0.0


def test_a_fact_write_is_timed_by_step(fake_embedder) -> None:  # type: ignore[no-untyped-def]
    """What a POST /facts spends waiting for an ingest thread, embedding and storing."""
    metrics = GatewayMetrics()
    pool = IngestPool(threads=1, max_queued=2, embedder=fake_embedder, metrics=metrics)

    def write() -> int:
        with pool.timed("embed"):
            pool.embedder.embed(["Orla Quenby's phone is 555-0101"])
        return 7

    assert asyncio.run(pool.run(write)) == 7
    pool.close()
    assert [ingest_observed(metrics, s) for s in ("wait", "embed", "store")] == [1, 1, 0]
    assert observed(metrics, "embed") == (0.0, 0.0)  # the query embedding's stage is apart
