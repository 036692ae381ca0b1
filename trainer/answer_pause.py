"""The trainer gives its cores to an engine on the same host while that engine answers.

On a host where the trainer and the engine share the CPU (`loramem run`, these 2-core
machines), an answer asked while a job trains took 2.3-2.4 s against about 1.5 s alone
(docs/RESULTS.md, "Time to the first right answer"): the first answer after a write
collides with the job the write started. So before a job's training starts, and between
optimizer steps, the worker waits while an engine on this host (a loopback URL) reports
requests in flight on vLLM's GET /load. A wait never exceeds `worker_answer_pause_s`, nor
the time the last step took, so under steady chat traffic training keeps at least half
of its time (a worker at niceness 19 would get about 1.5% of a core). Engines on other
hosts do not share the trainer's cores and are not asked.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from loramem.engine import EngineClient

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
POLL_S = 0.05  # an answer's token takes about this long on these cores


def on_this_host(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK_HOSTS


class AnswerPause:
    def __init__(self, engines: list[EngineClient], max_pause_s: float) -> None:
        self.local = [e for e in engines if on_this_host(e.base_url)]
        self.max_pause_s = max_pause_s

    def answering(self) -> bool:
        return any((engine.answering() or 0) > 0 for engine in self.local)

    def wait(self, limit_s: float | None = None) -> float:
        """Wait while a local engine answers, at most `limit_s` (and the setting's cap);
        the seconds waited."""
        budget = self.max_pause_s if limit_s is None else min(limit_s, self.max_pause_s)
        if budget <= 0 or not self.local or not self.answering():
            return 0.0
        started = time.monotonic()
        while time.monotonic() - started < budget:
            time.sleep(POLL_S)
            if not self.answering():
                break
        return time.monotonic() - started
