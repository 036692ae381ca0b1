"""`loramem run` stops what it started on SIGTERM, and on SIGINT even when it was started
in the background of a script (where the shell hands it SIGINT ignored)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

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
def test_the_launcher_stops_its_children(stop_with: signal.Signals) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        stdout=subprocess.PIPE,
        text=True,
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
import logging, sys, time
from loramem.launcher import Launcher
from loramem.settings import Settings

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
launcher = Launcher(Settings())
launcher.spawn("worker", ["sleep", "600"])
launcher.spawn("flaky", ["true"])  # dies at once, every time
try:
    launcher.wait()
except KeyboardInterrupt:
    pass
finally:
    launcher.stop_all()
"""


def test_a_dead_child_is_restarted_with_backoff_and_the_rest_keeps_running() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", RESTART_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    assert launcher.stdout is not None
    lines = []
    try:
        while len([x for x in lines if "restart" in x]) < 3:
            lines.append(launcher.stdout.readline())
    finally:
        launcher.send_signal(signal.SIGINT)  # stop_all, in the script's finally
        launcher.wait(timeout=30)
    restarts = [x for x in lines if "flaky exited" in x]
    assert restarts[0].strip().endswith("restart 1 in 1 s")
    assert restarts[1].strip().endswith("restart 2 in 2 s")  # backoff doubles
    assert restarts[2].strip().endswith("restart 3 in 4 s")
    assert not any("worker exited" in x for x in lines)
