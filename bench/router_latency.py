"""Router latency, index memory and routing accuracy: exact vs hnsw index.

    .venv/bin/python -m bench.router_latency --sizes 1000,10000,100000

At each size N one tenant's index holds N facts:
- the three evaluated modules, embedded with the real model: 10 PhoneBook people,
  10 CounterFact edits, and the 40 QA pairs of PaperQA paper 0;
- real distractors, also embedded: the rest of PhoneBook, CounterFact (4K) and the other
  PaperQA papers, packed 64 facts to a module as the gateway packs them (the paper's hard
  case: many modules of look-alike PhoneBook entries);
- random unit vectors for the remainder, 64 to a module.

Latency is `Router.route(tenant, "auto", question)`, the query embedding included, over the
paraphrase set repeated; "search" is the index search plus module aggregation alone.
Memory is the index's vector structures (`FactIndex.nbytes`) scaled to 100k facts, and the
process's resident-set growth while the index was built (Python bookkeeping included).
Accuracy: paraphrased questions the facts never contained must go to their module, and
unrelated questions to the base model. The evaluation set is evaluation/router_set.py,
which tests/integration/test_router_real.py asserts on too.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from evaluation.router_set import EvalSet, distractor_texts, eval_set
from loramem.registry import Registry
from loramem.settings import Settings
from router.embedder import Embedder, SentenceEmbedder
from router.router import NO_ADAPTER, Router

T = TypeVar("T")
MODULE_FACTS = 64  # distractor module size (the gateway's default module capacity)


# ------------------------------------------------------------------- benchmark
@dataclass
class Row:
    backend: str
    size: int
    build_s: float
    route_p50_ms: float
    route_p99_ms: float
    search_p50_ms: float
    search_p99_ms: float
    bytes_per_100k: float
    rss_per_100k: float
    module_acc: float
    base_acc: float
    recall: float  # share of exact's top-k facts this backend also returned


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _chunks(ids: list[str], prefix: str) -> Iterator[tuple[str, slice]]:
    for start in range(0, len(ids), MODULE_FACTS):
        yield f"{prefix}-{start // MODULE_FACTS:05d}", slice(start, start + MODULE_FACTS)


def build_router(
    settings: Settings,
    embedder: Embedder,
    evaluated: dict[str, np.ndarray],
    distractors: np.ndarray,
    size: int,
    seed: int = 0,
) -> tuple[Router, float]:
    """A router whose tenant "bench" holds `size` facts; returns it and the build time."""
    # Never contacted: the bench installs modules directly (no Redis reads or writes).
    registry = Registry.from_url(settings.redis_url)
    router = Router.from_settings(registry, embedder, settings)
    started = time.perf_counter()
    for module, vectors in evaluated.items():
        router.index_module(
            "bench", module, 1, NO_ADAPTER, [f"{module}-{i}" for i in range(len(vectors))], vectors
        )
    room = max(0, size - sum(len(v) for v in evaluated.values()))
    real = distractors[:room]
    rng = np.random.default_rng(seed)
    bulk = rng.standard_normal((room - len(real), embedder.dim), dtype=np.float32)
    bulk /= np.linalg.norm(bulk, axis=1, keepdims=True)
    for prefix, block in (("real", real), ("rand", bulk)):
        ids = [f"{prefix}-{i}" for i in range(len(block))]
        for module, part in _chunks(ids, prefix):
            router.index_module("bench", module, 1, NO_ADAPTER, ids[part], block[part])
    return router, time.perf_counter() - started


def _percentiles(samples: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.array(samples) * 1000.0, [50, 99])
    return float(p50), float(p99)


def _timed(call: Callable[[T], object], args: list[T], rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        for arg in args:
            started = time.perf_counter()
            call(arg)
            samples.append(time.perf_counter() - started)
    return samples


def measure(
    router: Router, evalset: EvalSet, rounds: int, truth: list[set[str]] | None
) -> tuple[dict[str, float], list[set[str]]]:
    questions = [q for q, _ in evalset.questions]
    for q in questions[:10]:  # warm-up
        router.route("bench", "auto", q)
    route_samples = _timed(lambda q: router.route("bench", "auto", q), questions, rounds)
    vectors = list(router.embed(questions))
    search_samples = _timed(lambda v: router.decide("bench", v), vectors, rounds)
    # Recall of exact's top-k facts, on the questions the evaluated modules answer (for the
    # unrelated ones the top k are near-ties among distractors, and nothing depends on them).
    asked = [v for v, (_q, want) in zip(vectors, evalset.questions, strict=True) if want]
    found = [{h.fact_id for h in router.decide("bench", v).candidates} for v in asked]
    truth = truth or found
    recall = np.mean([len(f & t) / len(t) for f, t in zip(found, truth, strict=True)])
    decisions = [(router.route("bench", "auto", q).module, want) for q, want in evalset.questions]
    in_domain = [got == want for got, want in decisions if want is not None]
    off_domain = [got is None for got, want in decisions if want is None]
    route = _percentiles(route_samples)
    search = _percentiles(search_samples)
    return {
        "recall": float(recall),
        "route_p50_ms": route[0],
        "route_p99_ms": route[1],
        "search_p50_ms": search[0],
        "search_p99_ms": search[1],
        "module_acc": float(np.mean(in_domain)),
        "base_acc": float(np.mean(off_domain)),
        "nbytes": float(router.index_stats("bench")[1]),
    }, found


def run(sizes: list[int], backends: list[str], rounds: int, threads: int | None) -> list[Row]:
    settings = Settings()
    embedder = SentenceEmbedder(settings.embedding_model, threads=threads)
    evalset = eval_set(settings.data_dir)
    evaluated = {m: embedder.embed(texts) for m, texts in evalset.modules.items()}
    texts = distractor_texts(settings.data_dir)
    random.Random(0).shuffle(texts)  # a mix of every source at every size
    distractors = embedder.embed(texts) if texts else np.zeros((0, embedder.dim), np.float32)
    rows = []
    for size in sizes:
        truth = None  # exact's top-k per question, when exact ran first at this size
        for backend in backends:
            gc.collect()
            rss_before = _rss_bytes()
            config = settings.model_copy(update={"router_index_backend": backend})
            router, build_s = build_router(config, embedder, evaluated, distractors, size)
            rss_delta = _rss_bytes() - rss_before
            got, found = measure(router, evalset, rounds, truth)
            truth = found if backend == "exact" else truth
            per_100k = 100_000 / size
            rows.append(
                Row(
                    backend,
                    size,
                    build_s,
                    got["route_p50_ms"],
                    got["route_p99_ms"],
                    got["search_p50_ms"],
                    got["search_p99_ms"],
                    got["nbytes"] * per_100k,
                    rss_delta * per_100k,
                    got["module_acc"],
                    got["base_acc"],
                    got["recall"] if truth is not None else float("nan"),
                )
            )
            del router
    return rows


def report(rows: list[Row], threshold: float, top_k: int, support_weight: float) -> str:
    mib = 1024 * 1024
    lines = [
        f"threshold={threshold} top_k={top_k} support_weight={support_weight}",
        f"{'facts':>7} {'index':>5} {'build s':>8} {'route p50':>9} {'route p99':>9} "
        f"{'search p50':>10} {'search p99':>10} {'MiB/100k':>8} {'RSS MiB/100k':>12} "
        f"{'->module':>8} {'->base':>6} {'recall':>6}",
    ]
    for r in rows:
        lines.append(
            f"{r.size:>7} {r.backend:>5} {r.build_s:>8.2f} {r.route_p50_ms:>9.2f} "
            f"{r.route_p99_ms:>9.2f} {r.search_p50_ms:>10.3f} {r.search_p99_ms:>10.3f} "
            f"{r.bytes_per_100k / mib:>8.1f} {r.rss_per_100k / mib:>12.1f} "
            f"{r.module_acc:>8.1%} {r.base_acc:>6.1%} {r.recall:>6.3f}"
        )
    by_key = {(r.size, r.backend): r for r in rows}
    lines.append("exact / hnsw:")
    for size in sorted({r.size for r in rows}):
        exact, hnsw = by_key.get((size, "exact")), by_key.get((size, "hnsw"))
        if exact is None or hnsw is None:
            continue
        lines.append(
            f"{size:>7} route p99 x{exact.route_p99_ms / hnsw.route_p99_ms:.2f}  "
            f"search p50 x{exact.search_p50_ms / hnsw.search_p50_ms:.1f}  "
            f"search p99 x{exact.search_p99_ms / hnsw.search_p99_ms:.1f}  "
            f"memory x{exact.bytes_per_100k / hnsw.bytes_per_100k:.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--backends", default="exact,hnsw")
    parser.add_argument("--rounds", type=int, default=4, help="passes over the question set")
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: LORAMEM_ROUTER_EMBED_THREADS)"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    settings = Settings()
    threads = args.threads or settings.router_embed_threads
    load = os.getloadavg()[0]
    rows = run(sizes, args.backends.split(","), args.rounds, threads)
    print(f"embedding threads={threads}; 1-min load average {load:.2f} at the start")
    print(
        report(
            rows, settings.route_threshold, settings.router_top_k, settings.router_support_weight
        )
    )


if __name__ == "__main__":
    main()
