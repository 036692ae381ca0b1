"""The guard that finds processes a test left running (tests/leaks.py), on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests import leaks

# A parent that starts a long sleep in a session of its own, says its pid, and exits: the
# sleep is adopted by init, out of reach of the test's Popen.
ORPHANING = """
import subprocess
quiet = subprocess.DEVNULL  # it must not hold the test's pipes open
child = subprocess.Popen(
    ["sleep", "600"], start_new_session=True, stdout=quiet, stderr=quiet, stdin=quiet
)
print(child.pid, flush=True)
"""


def _orphan() -> int:
    out = subprocess.run([sys.executable, "-c", ORPHANING], capture_output=True, text=True)
    return int(out.stdout)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while leaks._alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not leaks._alive(pid)


def test_an_orphaned_child_is_found_with_the_test_that_started_it_and_killed() -> None:
    leaks.mark("tests/unit/test_leaks.py::the-one")
    pid = _orphan()
    try:
        found = [leak for leak in leaks.find() if leak.pid == pid]
        assert [(leak.owner, leak.command) for leak in found] == [
            ("tests/unit/test_leaks.py::the-one", "sleep 600")
        ]
        leaks.kill(found)
        assert _gone(pid)
    finally:
        if leaks._alive(pid):
            os.kill(pid, 9)


def test_a_kept_session_is_not_a_leak_and_other_processes_are_not_ours() -> None:
    pid = _orphan()
    leaks.keep(pid)
    try:
        assert pid not in [leak.pid for leak in leaks.find()]
        assert os.getppid() not in [leak.pid for leak in leaks.find()]  # not started by us
    finally:
        leaks.release(pid)
        os.kill(pid, 9)
    assert _gone(pid)
