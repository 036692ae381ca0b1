"""Processes a test left running: found at the end of each test module, named, killed, and
listed at the end of the session.

Every process this pytest starts, and every process those start, inherits OWNER from the
environment: the pytest's pid and the test that was running. A process keeps it after its
parent dies and it is adopted by init, which is how a leaked child escapes
`Process.children()`. Most tests copy `os.environ` into the environments they pass on, so
the mark travels; a process started from an environment copied earlier (the e2e system's
`env`) names the test of that copy, so the report names the module just finished too.

Processes a session fixture keeps for later modules (the e2e system) register their
session ids with `keep`. Linux only: without /proc the guard finds nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

OWNER = "PYTEST_PROCESS_OWNER"  # not LORAMEM_*: tests drop those from their children's env
# Started by multiprocessing inside the pytest process itself; they end with it.
HELPERS = (b"multiprocessing.resource_tracker", b"multiprocessing.forkserver")
_kept_sessions: set[int] = set()


@dataclass(frozen=True)
class Leak:
    pid: int
    owner: str  # the test whose environment it was started from
    command: str


def mark(test: str) -> None:
    """Name the test that runs now in the environment every child inherits."""
    os.environ[OWNER] = f"{os.getpid()} {test}"


def keep(pid: int) -> None:
    """A session fixture's process: it and its session (its children) outlive tests."""
    _kept_sessions.add(pid)


def release(pid: int) -> None:
    _kept_sessions.discard(pid)


def find() -> list[Leak]:
    """This session's descendants, alive and not kept."""
    prefix = f"{OWNER}={os.getpid()} ".encode()
    me = os.getpid()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        try:
            environ = (entry / "environ").read_bytes()
            if prefix not in environ or pid == me:
                continue
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        # /proc/<pid>/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
        state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
        if state in ("Z", "X") or int(session) in _kept_sessions:
            continue
        if any(helper in command for helper in HELPERS):
            continue
        owner = next(v for v in environ.split(b"\0") if v.startswith(prefix))
        found.append(
            Leak(
                pid,
                owner[len(prefix) :].decode(errors="replace"),
                command.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")[:160],
            )
        )
    return found


def kill(leaks: list[Leak]) -> None:
    """SIGKILL each, and its process group where that is not the pytest's own."""
    own_group = os.getpgrp()
    for leak in leaks:
        try:
            group = os.getpgid(leak.pid)
            if group != own_group and group == leak.pid:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(leak.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while any(_alive(leak.pid) for leak in leaks) and time.monotonic() < deadline:
        time.sleep(0.05)
    for leak in leaks:  # reap those that were the pytest's own children
        try:
            os.waitpid(leak.pid, os.WNOHANG)
        except ChildProcessError:
            pass


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def stop_session(process: subprocess.Popen, timeout_s: float = 60) -> int:
    """SIGTERM a child started with `start_new_session`, and its exit code; past the
    timeout its whole group is killed (TimeoutExpired), so a failed test leaves nothing."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
