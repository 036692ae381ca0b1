"""`loramem run`: the whole system on one machine - Redis if needed, engine, worker, gateway.

Each part is a child process in its own process group; Ctrl-C (or any child dying) stops
everything this launcher started.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis

from loramem.base_model import prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.settings import Settings

log = logging.getLogger("loramem.run")

RESTART_MAX_DELAY_S = 30.0  # the longest wait before starting a dead child again
RESTART_RESET_S = 60.0  # a child that ran this long starts its backoff from 1 s again


class Launcher:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        # How to start each child again, how often it was restarted, and when it started.
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self._restarts: dict[str, int] = {}
        self._started_at: dict[str, float] = {}

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log.info("starting %s: %s", name, " ".join(command[:6]))
        process = subprocess.Popen(command, env=env, start_new_session=True)
        self._commands[name] = (command, env)
        self._started_at[name] = time.monotonic()
        names = [n for n, _p in self.children]
        if name in names:  # a restart keeps its place: stop_all stops in reverse order
            self.children[names.index(name)] = (name, process)
        else:
            self.children.append((name, process))

    def ensure_redis(self) -> None:
        url = self.settings.redis_url
        if _redis_answers(url):
            return
        parsed = urlparse(url)
        if parsed.hostname not in ("127.0.0.1", "localhost") or not shutil.which("redis-server"):
            raise SystemExit(
                f"No Redis answers at {url}. Start one, or set LORAMEM_REDIS_URL; "
                "installing Debian's redis-server lets `loramem run` start it for you."
            )
        data_dir = self.settings.cache_dir / "redis"
        data_dir.mkdir(parents=True, exist_ok=True)
        # Append-only persistence: an accepted fact survives a restart of Redis too.
        self.spawn(
            "redis",
            [
                "redis-server",
                "--port",
                str(parsed.port or 6379),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--dir",
                str(data_dir),
            ],
        )
        _wait_for(lambda: _redis_answers(url), 30, "redis-server")

    def start_engine(self, model_path: Path) -> None:
        self.spawn("engine", engine_command(self.settings, model_path), engine_env(self.settings))
        started = time.monotonic()
        _wait_for(
            self._engine_healthy,
            self.settings.engine_start_timeout_s,
            "vLLM engine",
            self.children[-1][1],
        )
        log.info("engine ready in %.0f s", time.monotonic() - started)

    def _engine_healthy(self) -> bool:
        try:
            return httpx.get(self.settings.engine_url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def run(self) -> int:
        # SIGTERM (docker stop, kill, a supervisor) and SIGINT stop the children too. SIGINT
        # needs its handler back: a shell without job control starts background commands
        # with it ignored, and Python then leaves it ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.ensure_redis()
            child_env = self.ensure_engine_key()
            self.start_engine(prepare_base_model(self.settings))
            me = [sys.executable, "-m", "cli"]
            self.spawn("worker", me + ["worker"], child_env)
            self.spawn("gateway", me + ["gateway"], child_env)
            log.info(
                "gateway on http://%s:%d (Ctrl-C stops everything)",
                self.settings.gateway_host,
                self.settings.gateway_port,
            )
            return self.wait()
        except KeyboardInterrupt:
            return 0
        finally:
            self.stop_all()

    def ensure_engine_key(self) -> dict[str, str]:
        """The engine's key, made for this run when none is set (zero-config `make run`);
        the worker and gateway get it through their environment, nothing else knows it."""
        key = self.settings.engine_api_key or secrets.token_urlsafe(32)
        self.settings = self.settings.model_copy(update={"engine_api_key": key})
        return {**os.environ, "LORAMEM_ENGINE_API_KEY": key}

    def wait(self) -> int:
        """Watch the children until Ctrl-C or SIGTERM: one that dies is started again after
        a backoff (1 s, doubling to RESTART_MAX_DELAY_S; back to 1 s after a child ran
        RESTART_RESET_S), so one crash does not stop the system."""
        due: dict[str, float] = {}  # child -> when to start it again
        while True:
            now = time.monotonic()
            for name, process in self.children:
                if process.poll() is None or name in due:
                    continue
                if now - self._started_at[name] > RESTART_RESET_S:
                    self._restarts[name] = 0
                self._restarts[name] = self._restarts.get(name, 0) + 1
                delay_s = min(RESTART_MAX_DELAY_S, 2.0 ** (self._restarts[name] - 1))
                log.error(
                    "%s exited with code %s; restart %d in %.0f s",
                    name,
                    process.returncode,
                    self._restarts[name],
                    delay_s,
                )
                due[name] = now + delay_s
            for name, at in list(due.items()):
                if now >= at:
                    del due[name]
                    self.spawn(name, *self._commands[name])
            time.sleep(0.5)

    def stop_all(self) -> None:
        for _name, process in reversed(self.children):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _wait_for(check, timeout_s: float, what: str, process=None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if process is not None and process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode} while starting")
        time.sleep(1.0)
    raise SystemExit(f"{what} did not become ready within {timeout_s:.0f} s")
