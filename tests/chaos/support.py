"""What the chaos tests share: the short or soak counts, a Redis server of their own that
they can kill, restart and pause, trainer workers as real processes, and figures printed
in one line per test (run with -s to see them as they come; -ra shows them too on a
failure).

Short form (the default run, CI): few faults per test. Soak (LORAMEM_CHAOS_SOAK=1): the
counts issue 12 asks for (20 worker kills, 10 hot swaps, ...).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import httpx
import redis

from loramem.settings import Settings
from tests.e2e.support import System, wait_http

SOAK = os.environ.get("LORAMEM_CHAOS_SOAK", "") not in ("", "0")


def count(short: int, soak: int) -> int:
    """The short form's count, or the soak's with LORAMEM_CHAOS_SOAK=1."""
    return soak if SOAK else short


def figures(test: str, **values: object) -> None:
    """One line of figures per test, also appended to $LORAMEM_CHAOS_REPORT if set."""
    line = f"[chaos {test}{' soak' if SOAK else ''}] " + ", ".join(
        f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
    )
    print("\n" + line, flush=True)
    if report := os.environ.get("LORAMEM_CHAOS_REPORT"):
        with open(report, "a") as out:
            out.write(line + "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a fixed port, so that it can be killed and
    started again at the same address (with AOF, from its own folder)."""

    def __init__(self, folder: Path, aof: bool = False) -> None:
        self.folder, self.aof, self.port = folder, aof, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.aof
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--dir",
                str(self.folder),
                *aof,
            ],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                # Still loading its AOF, not yet listening, or too slow to answer the
                # handshake in 0.5 s while the cores are busy training: ask again.
                assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)  # in case it was paused
        self.process.kill()
        self.process.wait(timeout=10)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


def worker_env(system: System, redis_url: str, adapters: Path, **extra: str) -> dict[str, str]:
    """A worker on the e2e system's engine (a version is published once an engine loaded
    it) and on the test's own Redis, with tiny training: the chaos invariants are about
    bookkeeping, not recall."""
    return {
        **system.env,
        "LORAMEM_REDIS_URL": redis_url,
        "LORAMEM_ADAPTER_DIR": str(adapters),
        "LORAMEM_TRAINER_METRICS_PORT": "0",
        "LORAMEM_JOB_CLAIM_IDLE_MS": "2000",
        "LORAMEM_JOB_COALESCE_MS": "0",
        "LORAMEM_WORKER_BLOCK_MS": "500",
        "LORAMEM_TRAINING__MAX_STEPS": "1",
        "LORAMEM_TRAINING__RECALL_GATE": "0",
        **extra,
    }


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@contextmanager
def engine_to_ourselves(system: System) -> Iterator[None]:
    """The e2e gateway paused (SIGSTOP) meanwhile: an engine serves one registry, and that
    gateway's reconciler unloads every loaded version its own registry does not know, so
    the versions of a test's own Redis would vanish from the shared engine."""
    gateway = system.processes.get("gateway")
    if gateway is not None:
        os.killpg(gateway.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if gateway is not None:
            os.killpg(gateway.pid, signal.SIGCONT)


class Stack:
    """A gateway and a trainer worker as real processes on the test's own Redis, serving
    through the e2e system's engine (or the engines in `gateway_env`)."""

    def __init__(
        self,
        system: System,
        server: RedisServer,
        folder: Path,
        engines: list[str] | None = None,
        **gateway_env: str,
    ) -> None:
        self.system, self.server, self.folder = system, server, folder
        self.port = free_port()
        urls = {"LORAMEM_ENGINE_URLS": ",".join(engines)} if engines else {}
        self.gateway_env = {
            **system.env,
            "LORAMEM_REDIS_URL": server.url,
            "LORAMEM_GATEWAY_PORT": str(self.port),
            "LORAMEM_ADAPTER_DIR": str(folder / "gateway-adapters"),
            # No rate windows: the test's clients are one tenant sending as fast as answered.
            "LORAMEM_RATE_REQUESTS_PER_WINDOW": "0",
            "LORAMEM_RATE_TOKENS_PER_WINDOW": "0",
            **urls,
            **gateway_env,
        }
        self.worker_env = worker_env(system, server.url, folder / "adapters", **urls)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)

    def __enter__(self) -> Stack:
        self._engine = engine_to_ourselves(self.system)
        self._engine.__enter__()
        try:
            self.server.start()
            with open(self.folder / "gateway.log", "ab") as out:
                self.processes["gateway"] = subprocess.Popen(
                    [sys.executable, "-m", "cli", "gateway"],
                    env=self.gateway_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes["worker"] = start_worker(self.worker_env, self.folder / "worker.log")
            wait_http(f"http://127.0.0.1:{self.port}/healthz", 180, self.processes["gateway"])
        except BaseException:  # no __exit__ follows a failed __enter__: stop what started
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes.values():
            kill(process)
        self.server.stop()
        self._engine.__exit__(None, None, None)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")[-3000:]

    def post(self, path: str, body: dict, tenant: str = "chaos") -> httpx.Response:
        return self.http.post(path, json=body, headers={"x-loramem-tenant": tenant})

    def wait_job(self, job_id: str, tenant: str = "chaos", timeout_s: float = 600) -> dict:
        """Polls as a client should: a 503 with Retry-After (Redis stalled for longer than
        the gateway's socket timeout, seen once in CI on a loaded machine) is asked again
        after the wait it names; anything else but 200 fails."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reply = self.http.get(f"/jobs/{job_id}", headers={"x-loramem-tenant": tenant})
            if reply.status_code == 503 and "retry-after" in reply.headers:
                time.sleep(float(reply.headers["retry-after"]))
                continue
            assert reply.status_code == 200, reply.text
            job = reply.json()
            if job["status"] in ("published", "failed"):
                assert job["status"] == "published", (job, self.log("worker"))
                return dict(job)
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not published in {timeout_s} s\n{self.log('worker')}")

    def chat(
        self, question: str, model: str, tenant: str = "chaos", **extra: object
    ) -> httpx.Response:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 16,
            **extra,
        }
        return self.post("/v1/chat/completions", body, tenant)


def gateway_settings(
    system: System, server: RedisServer, folder: Path, **extra: object
) -> Settings:
    """Settings for a gateway run in the test's process (TestClient) on the test's Redis
    and the e2e system's engine."""
    return Settings(
        redis_url=server.url,
        cache_dir=folder / "cache",
        adapter_dir=folder / "gateway-adapters",
        engine_url=system.settings.engine_url,
        engine_api_key=system.env["LORAMEM_ENGINE_API_KEY"],
        rate_requests_per_window=0,
        rate_tokens_per_window=0,
        **extra,  # type: ignore[arg-type]
    )


class ClientThreads:
    """Client threads that loop until the `with` block ends."""

    def __init__(self, targets: list[Callable[[], None]]) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=target) for target in targets]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
