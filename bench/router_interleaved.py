"""Route latency of router index settings side by side, interleaved query by query, at a
million facts: on a shared machine the load then falls on every setting alike, so their
ratio holds where the absolute times do not.

    .venv/bin/python -m bench.router_interleaved --facts 1000000 --real 5000 \\
        --variants "pq:2:64,ivf:fp16:64"

Reads the vectors bench/router_restart.py cached (run it once at that size first), fills
each variant as the router fills it, and times, per question, the query embedding (the
gateway's ONNX embedder) plus the search, for every variant in turn (the order rotates).
No Redis: routing reads nothing from it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.router_latency import _percentiles
from bench.router_restart import _fill, _variant, generated_questions
from evaluation.router_set import eval_set
from loramem.settings import Settings
from router.embedder import query_embedder
from router.index import FactIndex


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--facts", type=int, default=1_000_000)
    parser.add_argument("--real", type=int, default=5_000)
    parser.add_argument("--noise", type=float, default=0.45)
    parser.add_argument("--variants", default="pq:2:64,ivf:fp16:64")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/loramem-router-bench")
    args = parser.parse_args(argv)
    settings = Settings()
    path = Path(args.cache) / f"vectors-{args.facts}-{args.real}-{args.noise}.npy"
    matrix = np.load(path)
    ids = [f"f{i}" for i in range(len(matrix))]
    indexes: dict[str, FactIndex] = {}
    for spec in args.variants.split(","):
        index, searched = _variant(spec, matrix.shape[1], settings)
        searched[0][1]()  # the first (only) search setting of the spec
        _fill(index, ids, matrix, settings.router_pq_train_at)
        indexes[f"{spec} ({searched[0][0]})"] = index
    del matrix
    asker = query_embedder(settings)
    questions = [q for q, _ in eval_set(settings.data_dir).questions]
    questions += generated_questions(settings.data_dir, 200)
    k = settings.router_top_k

    def route(index: FactIndex, question: str) -> None:
        index.search(asker.embed([question])[0], k)

    names = list(indexes)
    times: dict[str, list[float]] = {n: [] for n in names}
    for q in questions[:10]:  # warm-up
        for name in names:
            route(indexes[name], q)
    for r in range(args.rounds):
        for i, q in enumerate(questions):
            for j in range(len(names)):
                name = names[(i + j + r) % len(names)]
                started = time.perf_counter()
                route(indexes[name], q)
                times[name].append(time.perf_counter() - started)
        print(f"round {r + 1} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    first = names[0]
    print(f"\n{len(questions)} questions x {args.rounds} rounds, embedding + search, ms")
    print("| index | p50 | p90 | p99 | p50 / first's |")
    print("|---|---:|---:|---:|---:|")
    base50 = _percentiles(times[first])[0]
    for name in names:
        p50, p99 = _percentiles(times[name])
        p90 = float(np.percentile(times[name], 90)) * 1000
        print(f"| {name} | {p50:.2f} | {p90:.2f} | {p99:.2f} | {p50 / base50:.2f} |")


if __name__ == "__main__":
    main()
