"""The whole path on a real three-master Redis Cluster: a fact is ingested, trained,
published, routed with model=auto and answered by the real engine. The gateway and the
worker here run against the cluster (`redis+cluster://`); the engine is the session's,
loaded by this gateway from its own folder (LORAMEM_ENGINE_RESOLVER=false), since its
resolver reads the single Redis of the other e2e tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest

from loramem.datasets import phonebook
from loramem.registry import Registry
from tests.e2e.support import System, answer, spawn, wait_http
from tests.services import buckets_per_node, redis_cluster

GATEWAY_PORT, METRICS_PORT = 18300, 18400  # beside the session system's 18000-18200


@pytest.fixture(scope="module")
def cluster_system(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with redis_cluster() as url:
        env = {
            **system.env,
            "LORAMEM_REDIS_URL": url,
            "LORAMEM_GATEWAY_PORT": str(GATEWAY_PORT),
            "LORAMEM_TRAINER_METRICS_PORT": str(METRICS_PORT),
            "LORAMEM_ENGINE_RESOLVER": "false",
            "LORAMEM_ADAPTER_DIR": str(tmp_path_factory.mktemp("cluster-adapters")),
        }
        processes: dict[str, subprocess.Popen] = {}
        try:
            processes["worker"] = spawn([sys.executable, "-m", "cli", "worker"], env)
            processes["gateway"] = spawn([sys.executable, "-m", "cli", "gateway"], env)
            wait_http(f"http://127.0.0.1:{GATEWAY_PORT}/healthz", 120, processes["gateway"])
            gateway = httpx.Client(base_url=f"http://127.0.0.1:{GATEWAY_PORT}", timeout=300)
            settings = system.settings.model_copy(update={"redis_url": url})
            yield replace(system, settings=settings, env=env, gateway=gateway, processes=processes)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)


def test_a_fact_is_ingested_published_routed_and_answered_on_a_redis_cluster(
    cluster_system: System,
) -> None:
    url = cluster_system.settings.redis_url
    assert len(buckets_per_node(url)) == 3  # the tenants' buckets spread over every master
    person = phonebook(cluster_system.settings.data_dir, 1, offset=440)[0]
    tenant = "e2e-cluster"
    posted = cluster_system.post_facts([person.fact], tenant=tenant, module="phones")
    job = cluster_system.wait_job(posted["job_id"], tenant=tenant)
    assert job["module"] == "phones" and job["version"] == 1
    reply = cluster_system.chat(person.question, tenant=tenant)  # model=auto: the router
    assert reply.headers["x-loramem-module"] == "phones@v1"
    assert person.phone in answer(reply), answer(reply)
    # It all lives in the cluster: the registry there knows the version.
    registry = Registry.from_url(url)
    assert registry.modules.get(f"{tenant}~phones").active_version == 1
