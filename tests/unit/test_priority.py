"""The worker's CPU priority (LORAMEM_WORKER_NICE): every thread of the process, torch's
included, ends up at the niceness asked, and the worker sets it before anything else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loramem.settings import Settings
from trainer import worker

# A fresh process (niceness is per process and cannot be raised back in this one): a thread
# started before, torch's OpenMP threads started after, then every thread's niceness.
CHILD = textwrap.dedent(
    """
    import json, os, sys, threading
    import torch
    from loramem.priority import lower_priority

    before = threading.Thread(target=threading.Event().wait, daemon=True)
    before.start()
    asked = int(sys.argv[1])
    first = lower_priority(asked)
    torch.set_num_threads(2)
    torch.ones(512, 512) @ torch.ones(512, 512)  # starts the OpenMP pool
    again = lower_priority(0)  # asking for a higher priority leaves it low
    tasks = os.listdir("/proc/self/task")
    nices = [os.getpriority(os.PRIO_PROCESS, int(t)) for t in tasks]
    print(json.dumps({"first": first, "again": again, "nices": nices}))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread niceness: Linux")
def test_every_thread_of_the_process_ends_up_at_the_niceness_asked() -> None:
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", CHILD, "7"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen["first"] == 7 and seen["again"] == 7
    assert len(seen["nices"]) >= 3  # main, the thread before, torch's threads
    assert set(seen["nices"]) == {7}


class Started(Exception):
    pass


def test_the_worker_lowers_its_priority_before_it_connects_or_loads(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls: list[str] = []
    monkeypatch.setattr(worker, "lower_priority", lambda nice: calls.append(f"nice {nice}") or 0)

    def connect(settings: Settings) -> None:
        calls.append("redis")
        raise Started

    monkeypatch.setattr(worker.Registry, "from_settings", connect)
    with pytest.raises(Started):
        worker.main(Settings(worker_nice=11))
    assert calls == ["nice 11", "redis"]


def test_the_setting_is_a_niceness() -> None:
    for bad in (-1, 20):
        with pytest.raises(ValueError):
            Settings(worker_nice=bad)
