"""Trainer workers SIGKILLed at random moments of running jobs while three tenants add,
edit and delete facts through the gateway. Every worker is a real process with real
(one-step) PEFT training; a new one starts after each kill and reclaims what the dead one
held.

Invariants afterwards: every acknowledged fact is in exactly one active version (with its
last acknowledged text), deleted facts are in none, no module version was published
twice, every job ended published and none is left pending in the stream.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from loramem import keys
from loramem.registry import Registry
from loramem.registry.jobs import TERMINAL, JobStatus
from loramem.settings import Settings
from server.app import create_app
from tests.chaos.support import (
    RedisServer,
    count,
    engine_to_ourselves,
    figures,
    gateway_settings,
    kill,
    start_worker,
    worker_env,
)
from tests.e2e.support import System

KILLS = count(short=3, soak=20)
TENANTS = ("chaos-a", "chaos-b", "chaos-c")


class Tenants:
    """What the gateway acknowledged (202): each tenant's live facts and deleted ones."""

    def __init__(self, gateway: TestClient, rng: random.Random) -> None:
        self.gateway, self.rng = gateway, rng
        self.live: dict[str, dict[str, str]] = {t: {} for t in TENANTS}
        self.deleted: dict[str, set[str]] = {t: set() for t in TENANTS}
        self.jobs: list[str] = []
        self.ops: Counter[str] = Counter()
        self.serial = 0

    def text(self, tenant: str) -> str:
        self.serial += 1
        return f"{tenant} item {self.serial} is stored in box {self.rng.randint(100, 999)}."

    def round(self) -> None:
        """One add, one edit and one delete, in a random order from random tenants."""
        for op in self.rng.sample(["add", "edit", "delete"], 3):
            self.step(op)
            time.sleep(self.rng.uniform(0, 1))

    def step(self, op: str) -> None:
        tenant = self.rng.choice(TENANTS)
        live = self.live[tenant]
        op = op if live else "add"
        headers = {"x-loramem-tenant": tenant}
        if op == "add":
            texts = [self.text(tenant) for _ in range(self.rng.randint(1, 2))]
            reply = self.gateway.post("/facts", json={"facts": texts}, headers=headers)
        else:
            fact_id = self.rng.choice(sorted(live))
            if op == "edit":
                texts = [self.text(tenant)]
                reply = self.gateway.put(
                    f"/facts/{fact_id}", json={"text": texts[0]}, headers=headers
                )
            else:
                reply = self.gateway.delete(f"/facts/{fact_id}", headers=headers)
        assert reply.status_code == 202, reply.text
        body = reply.json()
        self.jobs.append(body["job_id"])
        self.ops[op] += 1
        if op == "delete":
            del live[body["fact_ids"][0]]
            self.deleted[tenant].add(body["fact_ids"][0])
        else:
            live.update(zip(body["fact_ids"], texts, strict=True))


def _holding(client: redis.Redis, worker: subprocess.Popen[bytes]) -> bool:
    """Whether this worker process holds a job (a delivered, unacknowledged entry in one
    of the tenants' job streams)."""
    consumer = f"{socket.gethostname()}-{worker.pid}"  # trainer/worker.py names it so
    for tenant in TENANTS:
        try:
            if client.xpending_range(
                keys.job_stream(tenant), keys.TRAINER_GROUP, "-", "+", 1, consumername=consumer
            ):
                return True
        except redis.ResponseError:  # no stream or group yet for this tenant
            pass
    return False


def _wait_holding(client: redis.Redis, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while not _holding(client, worker) and time.monotonic() < deadline:
        time.sleep(0.1)  # past the deadline: every job done already; kill it idle


def _wait_drained(registry: Registry, jobs: list[str], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if registry.queue.pending_count() == 0 and all(
            registry.jobs.get(j).status in TERMINAL for j in jobs
        ):
            return
        time.sleep(1)
    left = Counter(str(registry.jobs.get(j).status) for j in jobs)
    pytest.fail(f"jobs not drained in {timeout_s:.0f} s: {left}\n{log.read_text()[-4000:]}")


@pytest.mark.timeout(600 + 120 * KILLS)
def test_killed_workers_lose_nothing_and_publish_no_version_twice(
    tmp_path: Path, system: System
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    # a tenant's facts spread over several modules
    settings = gateway_settings(system, server, tmp_path, module_capacity_facts=4)
    # No job is dead-lettered by these kills: that has its own test (test_dead_letter.py).
    env = worker_env(
        system, server.url, tmp_path / "adapters", LORAMEM_MAX_JOB_ATTEMPTS=str(KILLS + 2)
    )
    log = tmp_path / "workers.log"
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    registry = Registry.from_url(server.url)
    try:
        _run(system, server, settings, env, log, registry, rng, seed)
    finally:
        server.stop()


def _run(
    system: System,
    server: RedisServer,
    settings: Settings,
    env: dict[str, str],
    log: Path,
    registry: Registry,
    rng: random.Random,
    seed: int,
) -> None:
    started = time.monotonic()
    mid_job = 0  # kills of a worker holding a job
    client = server.client()
    with engine_to_ourselves(system), TestClient(create_app(settings)) as gateway:
        tenants = Tenants(gateway, rng)
        worker = start_worker(env, log)
        try:
            for _ in range(KILLS):
                tenants.round()
                # A random moment of a job: claimed, training, validating or publishing.
                _wait_holding(client, worker)
                time.sleep(rng.uniform(0, 10))  # a job takes some seconds: any phase
                mid_job += _holding(client, worker)
                kill(worker)
                worker = start_worker(env, log)
            _wait_drained(registry, tenants.jobs, timeout_s=300 + 30 * len(tenants.jobs), log=log)
        finally:
            kill(worker)
    deliveries = Counter(registry.jobs.get(j).attempts for j in tenants.jobs)
    statuses = Counter(str(registry.jobs.get(j).status) for j in tenants.jobs)
    published = [
        (e["module"], e["version"])
        for _id, e in registry.modules.events_after("0-0", block_ms=10)
        if e["type"] == "published"
    ]
    figures(
        "worker-kills",
        seed=seed,
        kills=KILLS,
        kills_mid_job=mid_job,
        jobs=len(tenants.jobs),
        ops=dict(tenants.ops),
        statuses=dict(statuses),
        deliveries=dict(sorted(deliveries.items())),
        versions_published=len(published),
        seconds=time.monotonic() - started,
    )
    assert statuses == {str(JobStatus.PUBLISHED): len(tenants.jobs)}, log.read_text()[-3000:]
    assert registry.queue.pending_count() == 0
    assert registry.queue.backlog() == (0, None)
    assert len(published) == len(set(published)), "a module version was published twice"
    for tenant in TENANTS:
        in_active: Counter[str] = Counter()
        for module in registry.modules.of_tenant(tenant):
            if module.active_version:
                version = registry.modules.version(module.name, module.active_version)
                in_active.update(version.fact_ids)
        for fact_id, text in tenants.live[tenant].items():
            assert in_active[fact_id] == 1, (tenant, fact_id, in_active[fact_id])
            assert registry.facts.get(tenant, fact_id).text == text
        assert not tenants.deleted[tenant] & set(in_active), "a deleted fact is served"
        assert set(in_active) == set(tenants.live[tenant])
