"""The gateway's fact-embedding child on torch and on ONNX Runtime, side by side in one run.

No engine is needed: the bench starts a real `loramem gateway` once per backend
(LORAMEM_ROUTER_EMBED_BACKEND, which decides both the query's and the facts' embedder),
on its own Redis and ports, e.g.:

    redis-server --port 6393 --save '' --appendonly no --daemonize yes
    export LORAMEM_REDIS_URL=redis://127.0.0.1:6393/0 LORAMEM_GATEWAY_PORT=19413 \\
        LORAMEM_ENGINE_URL=http://127.0.0.1:18413 LORAMEM_CACHE_DIR=/tmp/lean/cache
    flock /tmp/loramem-engine.lock .venv/bin/python -m bench.ingest_embed --repeats 2

Per gateway: the seconds from its start to /healthz and to its ingest child being up, the
child's memory (VmRSS and PSS, /proc) once started and after the posts, whether it mapped
libtorch, and `--posts` POST /facts of `--batch` PhoneBook facts each, one after another
(one tenant per gateway): the client's latency per POST (`write_s`) and the gateway's
`loramem_ingest_stage_seconds` sums (wait, embed, store). Prints a row per gateway and
the ratio onnx / torch of each figure, medians over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.worker_nice import ingest_seconds, start_cli, stop, wait_answering
from loramem.datasets import phonebook
from loramem.settings import get_settings

BACKENDS = ("torch", "onnx")
FIGURES = (
    "ready_s", "child_rss_mib", "child_pss_mib", "child_rss_after_mib", "gateway_rss_mib",
    "write_p50_s", "write_max_s", "embed_s", "store_s",
)  # fmt: skip


def memory_mib(pid: int) -> tuple[float, float]:
    """Resident and proportional (shared pages split among their users) memory."""
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    pss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    return rss_kib / 1024, pss_kib / 1024


def spawned_children(pid: int) -> list[int]:
    """Its multiprocessing workers (not multiprocessing's resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as handle:
            found += [int(c) for c in handle.read().split()]
    return [c for c in found if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def start_gateway(backend: str, gateway: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """The gateway and its ingest child's pid, once both are up."""
    env = {**os.environ, "LORAMEM_ROUTER_EMBED_BACKEND": backend, "HF_HUB_OFFLINE": "1"}
    process = start_cli("gateway", env, log)
    try:  # the lifespan starts the ingest child before the gateway serves
        wait_answering(process, f"{gateway}/healthz", "gateway", log)
        (child,) = spawned_children(process.pid)  # the ingest ProcessEmbedder's one worker
    except BaseException:
        stop(process)
        raise
    return process, child


def one_run(args: argparse.Namespace, backend: str, repeat: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    started = time.monotonic()
    gateway, child = start_gateway(backend, args.gateway, args.out / f"gateway-{backend}.log")
    try:
        ready_s = time.monotonic() - started
        child_rss, child_pss = memory_mib(child)
        count = args.posts * args.batch  # new rows per repeat: no fact is posted twice
        people = phonebook(get_settings().data_dir, count, offset=repeat * count)
        if len(people) < count:
            raise SystemExit(f"PhoneBook has no {count} rows from {repeat * count}: fewer --posts")
        headers = {"x-loramem-tenant": f"bench-embed-{uuid.uuid4().hex[:8]}"}
        before = ingest_seconds(args.gateway)
        writes_s = []
        with httpx.Client(base_url=args.gateway, timeout=120) as client:
            for post in range(args.posts):
                facts = [p.fact for p in people[post * args.batch : (post + 1) * args.batch]]
                sent = time.perf_counter()
                response = client.post("/facts", json={"facts": facts}, headers=headers)
                writes_s.append(time.perf_counter() - sent)
                response.raise_for_status()
        after = ingest_seconds(args.gateway)
        child_rss_after, _ = memory_mib(child)
        gateway_rss, _ = memory_mib(gateway.pid)
        torch_in_child = maps_torch(child)
    finally:
        stop(gateway)
    return {
        "backend": backend,
        "repeat": repeat,
        "ready_s": round(ready_s, 2),
        "child_rss_mib": round(child_rss),
        "child_pss_mib": round(child_pss),
        "child_rss_after_mib": round(child_rss_after),
        "gateway_rss_mib": round(gateway_rss),
        "torch_in_child": torch_in_child,
        "write_p50_s": round(statistics.median(writes_s), 4),
        "write_max_s": round(max(writes_s), 4),
        "first_write_s": round(writes_s[0], 4),
        "embed_s": round(after.get("embed", 0) - before.get("embed", 0), 4),
        "store_s": round(after.get("store", 0) - before.get("store", 0), 4),
        "load": f"{load:.1f}-{os.getloadavg()[0]:.1f}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = get_settings()
    parser.add_argument("--gateway", default=f"http://127.0.0.1:{settings.gateway_port}")
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10, help="facts per POST")
    parser.add_argument("--repeats", type=int, default=2, help="each backend, in turn")
    parser.add_argument("--out", type=Path, default=Path("eval-results/ingest-embed"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # The ONNX graph is exported once per host (torch loaded for it): not in the figures.
    export = "from loramem.settings import get_settings as g; from router.embedder import "
    export += "OnnxEmbedder as E; E(g().cache_dir / 'embedder')"
    subprocess.run([sys.executable, "-c", export], check=True)
    rows = []
    for repeat in range(args.repeats):
        for backend in BACKENDS:
            rows.append(one_run(args, backend, repeat))
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1))
    report(rows)


def report(rows: list[dict[str, Any]]) -> None:
    columns = ["backend", *FIGURES, "first_write_s", "torch_in_child", "load"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    for figure in FIGURES:
        median = {
            b: statistics.median(r[figure] for r in rows if r["backend"] == b) for b in BACKENDS
        }
        if median["torch"]:
            print(f"{figure}: onnx / torch, medians: {median['onnx'] / median['torch']:.2f}x")


if __name__ == "__main__":
    main()
