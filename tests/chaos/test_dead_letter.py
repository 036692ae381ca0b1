"""A job that takes its worker down every time it is delivered (here: the worker process
is SIGKILLed as soon as it starts on that job, as an OOM kill would) ends `failed` after
LORAMEM_MAX_JOB_ATTEMPTS deliveries, and the jobs queued behind it are served.

tests/integration/test_retention.py checks the same rule on one in-process worker with
the deliveries forged; this runs it with real worker processes and real training."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loramem.registry import Registry
from loramem.registry.jobs import JobStatus
from server.app import create_app
from tests.chaos.support import (
    RedisServer,
    engine_to_ourselves,
    figures,
    gateway_settings,
    kill,
    start_worker,
    worker_env,
)
from tests.e2e.support import System

ATTEMPTS = 3  # the setting's default


def _wait(predicate, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s:.0f} s"
        time.sleep(0.2)


@pytest.mark.timeout(900)
def test_a_job_that_kills_its_worker_is_dead_lettered_and_the_queue_goes_on(
    tmp_path: Path, system: System
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    settings = gateway_settings(system, server, tmp_path)
    env = worker_env(
        system, server.url, tmp_path / "adapters", LORAMEM_MAX_JOB_ATTEMPTS=str(ATTEMPTS)
    )
    log = tmp_path / "workers.log"
    registry = Registry.from_url(server.url)
    try:
        with engine_to_ourselves(system), TestClient(create_app(settings)) as gateway:

            def post(text: str, module: str, tenant: str) -> str:
                reply = gateway.post(
                    "/facts",
                    json={"facts": [text], "module": module},
                    headers={"x-loramem-tenant": tenant},
                )
                assert reply.status_code == 202, reply.text
                return str(reply.json()["job_id"])

            deadly = post("The deadly box holds 417 coins.", "deadly", "chaos-a")
            behind = [
                post("The blue box holds 12 coins.", "calm-a", "chaos-a"),
                post("The red box holds 88 coins.", "calm-b", "chaos-b"),
            ]
            started = time.monotonic()
            for delivery in range(1, ATTEMPTS + 1):
                worker = start_worker(env, log)
                try:
                    _wait(
                        lambda d=delivery: registry.jobs.get(deadly).attempts >= d,  # type: ignore[misc]
                        120,
                        f"delivery {delivery}",
                    )
                finally:
                    kill(worker)  # the job takes its worker down
            worker = start_worker(env, log)
            try:
                _wait(
                    lambda: registry.jobs.get(deadly).status is JobStatus.FAILED,
                    120,
                    "dead-lettering",
                )
                dead_lettered_s = time.monotonic() - started
                _wait(
                    lambda: all(registry.jobs.get(j).status is JobStatus.PUBLISHED for j in behind),
                    300,
                    "the jobs behind it",
                )
                served_s = time.monotonic() - started
            finally:
                kill(worker)
            job = gateway.get(f"/jobs/{deadly}", headers={"x-loramem-tenant": "chaos-a"}).json()
        figures(
            "dead-letter",
            max_job_attempts=ATTEMPTS,
            workers_killed=ATTEMPTS,
            dead_lettered_after_s=dead_lettered_s,
            jobs_behind_served_after_s=served_s,
            pending=registry.queue.pending_count(),
        )
        assert job["status"] == "failed"
        assert job["error"] == f"gave up after {ATTEMPTS} deliveries: the worker died each time"
        assert registry.queue.pending_count() == 0
    finally:
        server.stop()
