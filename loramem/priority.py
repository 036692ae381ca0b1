"""A process's CPU priority, lowered so that serving keeps the cores (LORAMEM_WORKER_NICE)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

TASKS = Path("/proc/self/task")  # Linux: one entry per thread of this process


def lower_priority(nice: int) -> int:
    """Put every thread of this process at niceness `nice`, or leave it where it is when it
    already runs lower (raising it would need privileges, and someone lowered it on
    purpose). Linux keeps a niceness per thread, and a new thread takes its creator's, so
    call it before the process starts its worker threads (torch's OpenMP pool); threads
    that exist already are lowered too. Returns the calling thread's niceness."""
    threads = [int(t.name) for t in TASKS.iterdir()] if TASKS.is_dir() else [0]
    for thread in threads:
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, thread) < nice:
                os.setpriority(os.PRIO_PROCESS, thread, nice)
    return os.getpriority(os.PRIO_PROCESS, 0)
