"""Read your writes while the trainer trains, with the worker at each niceness and answer
pause, side by side.

Start an engine and a gateway (no worker: this starts its own, once per run):

    redis-server --port 6395 --save '' --appendonly no --daemonize yes
    export LORAMEM_REDIS_URL=redis://127.0.0.1:6395/0 LORAMEM_ENGINE_PORT=19140 \\
        LORAMEM_ENGINE_URL=http://127.0.0.1:19140 LORAMEM_GATEWAY_PORT=19141 \\
        LORAMEM_TRAINER_METRICS_PORT=19142
    .venv/bin/python -m cli engine &      # wait until it answers
    .venv/bin/python -m cli gateway &
    .venv/bin/python -m bench.worker_nice --workers 0:0,0:3,19:0 --repeats 2

`--workers` lists each worker's setting as NICE or NICE:PAUSE (`LORAMEM_WORKER_NICE` and
`LORAMEM_WORKER_ANSWER_PAUSE_S`; without PAUSE, the setting's default). For each repeat,
for each worker setting (so the settings alternate on the same engine and gateway): a
worker is started with it, `loramem eval read-your-writes` runs against the gateway
(`--lock`: holding that file's flock only while it runs), and the worker is stopped.
Per run it records the eval's figures (write -> first right answer, of which the write
and the answer; write -> published), the gateway's fact-write steps
(`loramem_ingest_stage_seconds`: wait, embed, store; summed over the run's writes) and
the load average. Prints a table of every run and the median ratio of each figure, each
worker setting against the first one given.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loramem.settings import get_settings

FIGURES = ("first_right_s", "write_s", "first_right_answer_s", "published_s")
INGEST_METRIC = "loramem_ingest_stage_seconds"  # server/metrics.py INGEST_STAGE_METRIC_NAME


def ingest_seconds(gateway: str) -> dict[str, float]:
    """The gateway's fact-write steps so far: seconds summed per stage."""
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == INGEST_METRIC:
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    sums[sample.labels["stage"]] = sample.value
    return sums


class Held:
    """An flock on a file, held while the eval runs (others' timed runs wait for it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> Held:
        self.file = self.path.open("a")
        fcntl.flock(self.file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def start_cli(command: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`loramem <command>` in a process group of its own, its output appended to `log`."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", command],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def worker_env(setting: str) -> dict[str, str]:
    """NICE or NICE:PAUSE as the worker's environment."""
    nice, _, pause = setting.partition(":")
    env = {**os.environ, "LORAMEM_WORKER_NICE": str(int(nice))}
    if pause:
        env["LORAMEM_WORKER_ANSWER_PAUSE_S"] = str(float(pause))
    return env


def start_worker(setting: str, log: Path, metrics_port: int) -> subprocess.Popen[bytes]:
    worker = start_cli("worker", worker_env(setting), log)
    # its metrics answer once the model is loaded
    wait_answering(worker, f"http://127.0.0.1:{metrics_port}/metrics", "worker", log)
    return worker


def wait_answering(
    process: subprocess.Popen[bytes], url: str, name: str, log: Path, timeout_s: float = 300
) -> None:
    """Until `url` answers 200; stops early when the process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the {name} exited ({process.returncode}); see {log}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the {name} did not start in {timeout_s:.0f} s; see {log}")


def stop(worker: subprocess.Popen[bytes]) -> None:
    os.killpg(worker.pid, signal.SIGTERM)
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()


def one_run(args: argparse.Namespace, setting: str, out: Path) -> list[dict[str, Any]]:
    metrics_port = get_settings().trainer_metrics_port
    worker = start_worker(setting, out.parent / f"worker-{out.name}.log", metrics_port)
    lock: AbstractContextManager[Any] = Held(args.lock) if args.lock else nullcontext()
    try:
        with lock:
            load_before = os.getloadavg()[0]
            before = ingest_seconds(args.gateway)
            command = [
                sys.executable, "-m", "cli", "eval", "read-your-writes",
                "--gateway", args.gateway, "--out", str(out), "--datasets", args.datasets,
                "--count", str(args.count), "--edits", str(args.edits),
                "--interims", args.interims, "--max-steps", str(args.max_steps),
            ]  # fmt: skip
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            after = ingest_seconds(args.gateway)
            load_after = os.getloadavg()[0]
    finally:
        stop(worker)
    results = json.loads((out / "results.json").read_text())
    steps = {s: round(after.get(s, 0) - before.get(s, 0), 3) for s in after}
    rows = []
    for name, result in results["sets"].items():
        for phase in result["phases"]:
            rag = next((a for a in phase["arms"] if a["arm"] == "rag"), None)
            published = next(a for a in phase["arms"] if a["arm"] == "published")
            rows.append(
                {
                    "worker": setting,
                    "data": name,
                    "phase": phase["phase"],
                    **{f: phase[f] for f in FIGURES},
                    "rag_right": rag["right"] if rag else None,
                    "published_right": published["right"],
                    "load": f"{load_before:.1f}-{load_after:.1f}",
                    "ingest_steps_s": steps,  # the whole run's writes, every data set
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    settings = get_settings()
    parser.add_argument("--gateway", default=f"http://127.0.0.1:{settings.gateway_port}")
    parser.add_argument(
        "--workers", "--nices", default="0,19", help="NICE or NICE:PAUSE per run, in turn"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--datasets", default="phonebook,counterfact")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--edits", type=int, default=2)
    parser.add_argument("--interims", default="rag", help="'' asks nothing while jobs train")
    parser.add_argument("--max-steps", type=int, default=settings.training.max_steps)
    parser.add_argument("--lock", type=Path, help="flock this file while each eval runs")
    parser.add_argument("--out", type=Path, default=Path("eval-results/worker-nice"))
    args = parser.parse_args()
    workers = args.workers.split(",")
    for worker in workers:
        worker_env(worker)  # a typo fails here, not after the first run
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for worker in workers:
            folder = "nice" + worker.replace(":", "-pause")
            rows += one_run(args, worker, args.out / f"{folder}-{repeat}")
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "runs.json").write_text(json.dumps(rows, indent=1))
    report(rows, workers)


def report(rows: list[dict[str, Any]], workers: list[str]) -> None:
    print("| worker (nice:pause) | data | phase | write -> right (s) | write (s) | answer (s) "
          "| write -> published (s) | rag right | published right | load |")  # fmt: skip
    print("|---" * 10 + "|")
    for r in rows:
        cells = [r["worker"], r["data"], r["phase"], *(r[f] for f in FIGURES),
                 r["rag_right"], r["published_right"], r["load"]]  # fmt: skip
        print("| " + " | ".join("" if c is None else str(c) for c in cells) + " |")
    first = workers[0]
    for worker in workers[1:]:
        for figure in FIGURES:
            ratios = [
                ours[figure] / theirs[figure]
                for ours, theirs in _pairs(rows, worker, first)
                if ours[figure] and theirs[figure]
            ]
            if ratios:
                print(
                    f"{figure}: worker {worker} / worker {first}, median of {len(ratios)}: "
                    f"{statistics.median(ratios):.2f}x"
                )


def _pairs(rows: list[dict[str, Any]], worker: str, first: str) -> list[tuple[dict, dict]]:
    """Each (data, phase) of a run with `worker` against the same of the run just before
    or after it with `first`, in the order they ran."""
    ours = [r for r in rows if r["worker"] == worker]
    theirs = [r for r in rows if r["worker"] == first]
    return list(zip(ours, theirs, strict=False))


if __name__ == "__main__":
    main()
