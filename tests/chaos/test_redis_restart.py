"""Redis SIGKILLed and started again (AOF, fsync always) while clients post facts and chat.
The gateway, the trainer worker and the engine are real processes that nobody restarts.

Shows: 0 acknowledged (202) facts lost; chat on a known module answers throughout the
outage (from the gateway's routing state); ingest is accepted again within 10 s of Redis'
return; the worker reconnects by itself and publishes what was posted."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from loramem.registry import Registry
from tests.chaos.support import ClientThreads, RedisServer, Stack, count, figures
from tests.e2e.support import System

OUTAGES = count(short=1, soak=3)
OUTAGE_S = 5.0
TRAFFIC_BEFORE_S = 4.0
TRAFFIC_AFTER_S = 12.0


class Traffic(ClientThreads):
    """Two client threads: one posts a fact every 0.3 s, one chats on the known module."""

    def __init__(self, stack: Stack, module: str) -> None:
        self.stack, self.module = stack, module
        self.acked: list[tuple[float, str, str]] = []  # (when, fact id, job id)
        self.refused: list[tuple[float, int]] = []
        self.chats: list[tuple[float, float, int]] = []  # (sent, answered, status)
        super().__init__([self._ingest, self._chat])

    def _ingest(self) -> None:
        serial = 0
        while not self.stop.wait(0.3):
            serial += 1
            fact = f"Parcel {serial} was shipped to dock {serial % 7}."
            try:
                reply = self.stack.post("/facts", {"facts": [fact], "module": "ingest"})
            except Exception:  # a client-side timeout counts as refused, not as acknowledged
                self.refused.append((time.monotonic(), 0))
                continue
            if reply.status_code == 202:
                body = reply.json()
                self.acked.append((time.monotonic(), body["fact_ids"][0], body["job_id"]))
            else:
                self.refused.append((time.monotonic(), reply.status_code))

    def _chat(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status = self.stack.chat("Where is the lighthouse?", self.module, max_tokens=4)
                code = status.status_code
            except Exception:
                code = 0
            self.chats.append((sent, time.monotonic(), code))


@pytest.mark.timeout(900 + 120 * OUTAGES)
def test_redis_restarted_under_traffic_loses_no_acknowledged_fact(
    tmp_path: Path, system: System
) -> None:
    server = RedisServer(tmp_path, aof=True)
    with Stack(system, server, tmp_path) as stack:
        posted = stack.post("/facts", {"facts": ["The lighthouse is on Gull Point."]})
        assert posted.status_code == 202, posted.text
        module = stack.wait_job(posted.json()["job_id"])["module"]
        deadline = time.monotonic() + 60
        while stack.chat("Where is the lighthouse?", module, max_tokens=4).status_code != 200:
            assert time.monotonic() < deadline, stack.log("gateway")
            time.sleep(1)
        outages: list[tuple[float, float]] = []
        resumed_after: list[float] = []
        with Traffic(stack, module) as traffic:
            for _ in range(OUTAGES):
                time.sleep(TRAFFIC_BEFORE_S)
                server.kill()
                down = time.monotonic()
                time.sleep(OUTAGE_S)
                server.start()
                back = time.monotonic()
                outages.append((down, back))
                time.sleep(TRAFFIC_AFTER_S)
                first = next((t for t, _f, _j in traffic.acked if t > back), None)
                resumed_after.append(first - back if first is not None else float("inf"))
        registry = Registry.from_url(server.url)
        lost = [f for _t, f, _j in traffic.acked if not _exists(registry, f)]
        during = [
            code
            for sent, done, code in traffic.chats
            for d, b in outages
            if d <= sent and done <= b
        ]
        failed_chats = [c for _s, _d, c in traffic.chats if c != 200]
        # The worker reconnected by itself: everything acknowledged gets published.
        deadline = time.monotonic() + 600
        while unpublished := [
            j for _t, _f, j in traffic.acked if registry.jobs.get(j).status.value != "published"
        ]:
            if time.monotonic() > deadline:
                break
            time.sleep(1)
        figures(
            "redis-restart",
            outages=OUTAGES,
            outage_s=OUTAGE_S,
            acknowledged=len(traffic.acked),
            lost=len(lost),
            refused=len(traffic.refused),
            chats=len(traffic.chats),
            chats_during_outage=len(during),
            failed_chats=len(failed_chats),
            ingest_resumed_after_s=max(resumed_after),
            unpublished_jobs=len(unpublished),
        )
        assert not lost, lost
        assert during and all(code == 200 for code in during), during
        assert not failed_chats, failed_chats
        assert max(resumed_after) < 10.0
        assert not unpublished


def _exists(registry: Registry, fact_id: str) -> bool:
    try:
        registry.facts.get("chaos", fact_id)
    except Exception:
        return False
    return True
