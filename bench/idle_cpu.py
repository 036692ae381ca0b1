"""CPU that the idle system uses: every loramem process and Redis, in % of one core.

    flock /tmp/loramem-engine.lock .venv/bin/python -m bench.idle_cpu
    .venv/bin/python -m bench.idle_cpu --attach <pid of `loramem run`>

Without `--attach` it starts `loramem run` as a user would (free ports, its own run and
adapter folders, Redis `LORAMEM_REDIS_URL` when one answers there, else the launcher
starts one), waits until the launcher says ready, then until no job is waiting or
running and `--settle` seconds more have passed (start-up compiles and warm-ups end),
and samples for `--seconds` (60). With `--attach` it measures a running launcher's
process tree the same way.

Each process's CPU time (user + system, from /proc through psutil) is read at the start
and at the end of the window, and every `--every` seconds between, so that a process
that appears meanwhile counts from when it was first seen. Redis is found from its own
INFO (`process_id`; on this host only). Printed: per process % of one core, the total,
and with `--threads N` the N busiest threads of each process (their /proc names), which
tells which loop a process's time goes to. `--profile FILE` then records the tree's
Python stacks with py-spy (not idle frames only, collapsed: one line per stack and its
sample count) for as long again, apart from the measured window since sampling costs CPU.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import psutil
import redis

from loramem.registry import Registry

READY_TIMEOUT_S = 900.0  # a first start compiles the engine's kernels


@dataclass
class Sample:
    """One process over the window: its label and CPU seconds since first seen."""

    label: str
    first_s: float  # CPU seconds when first seen
    last_s: float
    threads_first: dict[int, float] = field(default_factory=dict)
    threads_last: dict[int, float] = field(default_factory=dict)

    @property
    def cpu_s(self) -> float:
        return self.last_s - self.first_s

    def busiest_threads(self, pid: int, count: int) -> list[tuple[str, float]]:
        spent = {t: s - self.threads_first.get(t, s) for t, s in self.threads_last.items()}
        top = sorted(spent.items(), key=lambda kv: -kv[1])[:count]
        return [(_thread_name(pid, t), s) for t, s in top]


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _thread_name(pid: int, tid: int) -> str:
    try:
        name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        name = "?"
    return f"{name} ({tid})"


def label(process: psutil.Process, root_pid: int) -> str:
    """What a process is, from its command line: the launcher's children by role, their
    own children (vLLM's engine core, the gateway's embedding process) by parent role
    and process name."""
    if process.pid == root_pid:
        return "launcher"
    try:
        command = " ".join(process.cmdline())
        name = process.name()
        parent = process.parent()
    except psutil.Error:
        return "gone"
    if "redis-server" in command or name.startswith("redis-server"):
        return "redis"
    role = _role(command)
    if role:
        return role
    if parent is not None and parent.pid != root_pid:
        return f"{label(parent, root_pid)} / {name}"
    return name


def _role(command: str) -> str | None:
    if "vllm.entrypoints" in command:
        return "engine (API server)"
    for role in ("gateway", "worker"):
        if f"-m cli {role}" in command or command.endswith(f"loramem {role}"):
            return role
    return None


def tree(root: psutil.Process, redis_pid: int | None) -> list[psutil.Process]:
    processes = [root, *root.children(recursive=True)]
    if redis_pid is not None and redis_pid not in {p.pid for p in processes}:
        try:
            processes.append(psutil.Process(redis_pid))
        except psutil.NoSuchProcess:
            pass
    return processes


def redis_pid(url: str) -> int | None:
    """The pid of the Redis at `url`, when it runs on this host."""
    if urlparse(url).hostname not in ("127.0.0.1", "localhost", socket.gethostname()):
        return None
    try:
        return int(redis.Redis.from_url(url, socket_timeout=2).info("server")["process_id"])
    except (redis.RedisError, KeyError, ValueError):
        return None


def measure(
    root: psutil.Process, redis_url: str, seconds: float, every_s: float
) -> tuple[dict[int, Sample], float]:
    """CPU seconds per process over `seconds` of wall time; returns them and the wall
    time measured."""
    samples: dict[int, Sample] = {}
    started = time.monotonic()
    deadline = started + seconds
    pid_of_redis = redis_pid(redis_url)
    while True:
        for process in tree(root, pid_of_redis):
            try:
                with process.oneshot():
                    cpu = _cpu_s(process)
                    threads = {t.id: t.user_time + t.system_time for t in process.threads()}
            except psutil.Error:
                continue
            sample = samples.get(process.pid)
            if sample is None:
                samples[process.pid] = Sample(
                    label(process, root.pid), cpu, cpu, dict(threads), dict(threads)
                )
            else:
                sample.last_s, sample.threads_last = cpu, threads
        now = time.monotonic()
        if now >= deadline:
            return samples, now - started
        time.sleep(min(every_s, deadline - now))


def report(samples: dict[int, Sample], wall_s: float, threads: int) -> str:
    lines = [
        f"CPU over {wall_s:.0f} s of wall time, % of one core:",
        "",
        "| process | pid | % of one core |",
        "|---|---|---|",
    ]
    rows = sorted(samples.items(), key=lambda kv: -kv[1].cpu_s)
    for pid, sample in rows:
        lines.append(f"| {sample.label} | {pid} | {100 * sample.cpu_s / wall_s:.2f} |")
    total = sum(s.cpu_s for s in samples.values())
    lines.append(f"| **total** | | **{100 * total / wall_s:.2f}** |")
    if threads:
        lines.append("")
        for pid, sample in rows:
            busy = [
                f"{name} {100 * s / wall_s:.2f}"
                for name, s in sample.busiest_threads(pid, threads)
                if s > 0
            ]
            if busy:
                lines.append(f"{sample.label} ({pid}) threads: " + ", ".join(busy))
    return "\n".join(lines)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_system(folder: Path, redis_url: str | None) -> tuple[subprocess.Popen[str], str, str]:
    """`loramem run` with its own ports and folders; returns it, its Redis URL and the
    gateway's URL once it says it is ready."""
    gateway_port, engine_port = _free_port(), _free_port()
    redis_url = redis_url or f"redis://127.0.0.1:{_free_port()}/0"
    env = {
        **os.environ,
        "LORAMEM_REDIS_URL": redis_url,
        "LORAMEM_ENGINE_PORT": str(engine_port),
        "LORAMEM_ENGINE_URL": f"http://127.0.0.1:{engine_port}",
        "LORAMEM_ENGINE_URLS": "",
        "LORAMEM_GATEWAY_PORT": str(gateway_port),
        "LORAMEM_TRAINER_METRICS_PORT": str(_free_port()),
        "LORAMEM_RUN_DIR": str(folder / "run"),
        "LORAMEM_ADAPTER_DIR": str(folder / "adapters"),
        "LORAMEM_ENGINE_ADAPTER_CACHE_DIR": str(folder / "engine-adapters"),
        "LORAMEM_ROUTER_SNAPSHOT_DIR": str(folder / "router"),
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert launcher.stderr is not None
    deadline = time.monotonic() + READY_TIMEOUT_S
    for line in launcher.stderr:  # the launcher writes one line per phase
        print(line.rstrip(), file=sys.stderr)
        if "loramem is ready" in line:
            # Drain the rest of its output, or a full pipe would block the launcher.
            subprocess.Popen(["cat"], stdin=launcher.stderr, stdout=subprocess.DEVNULL)
            return launcher, redis_url, f"http://127.0.0.1:{gateway_port}"
        if time.monotonic() > deadline:
            break
    launcher.kill()
    raise SystemExit("loramem run did not become ready; see its lines above")


def settle(redis_url: str, settle_s: float) -> None:
    """Until no job waits or runs, then `settle_s` more."""
    queue = Registry.from_url(redis_url).queue
    while queue.backlog()[0]:
        time.sleep(1.0)
    time.sleep(settle_s)


def profile(root: psutil.Process, seconds: float, path: Path) -> None:
    """py-spy's collapsed stacks of every Python process in the tree, busy frames only."""
    subprocess.run(
        # The venv's py-spy (the dev extra), whether or not the venv is on PATH.
        [
            str(Path(sys.executable).with_name("py-spy")),
            "record",
            "--pid",
            str(root.pid),
            "--subprocesses",
            "--nonblocking",
        ]
        + ["--duration", str(int(seconds)), "--rate", "50", "--format", "raw"]
        + ["--output", str(path)],
        check=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--attach", type=int, help="pid of a running `loramem run`")
    parser.add_argument("--redis-url", default=os.environ.get("LORAMEM_REDIS_URL"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds after ready")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--threads", type=int, default=0, help="busiest threads shown")
    parser.add_argument("--profile", type=Path, help="py-spy collapsed stacks to this file")
    args = parser.parse_args()
    if args.attach:
        redis_url = args.redis_url or "redis://127.0.0.1:6379/0"
        settle(redis_url, 0.0)
        root = psutil.Process(args.attach)
        samples, wall_s = measure(root, redis_url, args.seconds, args.every)
        print(report(samples, wall_s, args.threads))
        if args.profile:
            profile(root, args.seconds, args.profile)
        return
    with tempfile.TemporaryDirectory(prefix="idle-cpu-") as folder:
        launcher, redis_url, _url = start_system(Path(folder), args.redis_url)
        try:
            settle(redis_url, args.settle)
            root = psutil.Process(launcher.pid)
            samples, wall_s = measure(root, redis_url, args.seconds, args.every)
            print(report(samples, wall_s, args.threads), flush=True)
            if args.profile:
                profile(root, args.seconds, args.profile)
        finally:
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=60)


if __name__ == "__main__":
    main()
