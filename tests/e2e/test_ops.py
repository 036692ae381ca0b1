"""Operations through the real path: Prometheus scraping the dashboard's metrics, two
engines behind one gateway, two trainer workers sharing the job stream."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loramem.datasets import phonebook
from loramem.engine import engine_command, engine_env
from loramem.names import module_id, version_name
from loramem.registry import Registry
from server.engines import EnginePool
from tests.e2e.support import (
    E2E_REDIS_URL,
    ENGINE_HEADERS,
    System,
    answer,
    spawn,
    wait_http,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "loramem.json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _panel_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


def test_every_dashboard_panel_has_data_in_a_real_prometheus(system: System) -> None:
    binary = shutil.which("prometheus")
    assert binary, "install Debian's prometheus package (make test does, as root)"
    # A module to hit: the suite's first test published one; make sure of it here too.
    person = phonebook(system.settings.data_dir, 1, offset=500)[0]
    system.wait_job(system.post_facts([person.fact], tenant="ops")["job_id"], tenant="ops")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: gateway\n    static_configs: [{targets: ['127.0.0.1:18000']}]\n"
            "  - job_name: trainer\n    static_configs: [{targets: ['127.0.0.1:18200']}]\n"
            # The engine's own LoRA cache counts (loramem/vllm_lora_cache.py).
            "  - job_name: engine\n    static_configs: [{targets: ['127.0.0.1:18100']}]\n"
        )
        prometheus = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder}/data",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/-/ready", 60, prometheus)
            deadline = time.monotonic() + 20  # routed and base traffic while it scrapes
            while time.monotonic() < deadline:
                system.chat(person.question, tenant="ops", max_tokens=4)
                system.chat("What is the capital of France?", tenant="ops", max_tokens=4)
                system.chat("Hi", model=system.settings.base_name, tenant="ops", max_tokens=4)
                system.chat(person.question, tenant="ops", max_tokens=4, stream=True)  # TTFT
            empty = []
            for expr in _panel_expressions():
                reply = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr})
                assert reply.status_code == 200, (expr, reply.text)
                if not reply.json()["data"]["result"]:
                    empty.append(expr)
            assert not empty, f"panels without data: {empty}"
        finally:
            prometheus.terminate()
            prometheus.wait(timeout=30)


def test_two_trainer_workers_publish_every_job_exactly_once(system: System) -> None:
    second = spawn(
        [sys.executable, "-m", "cli", "worker"],
        {**system.env, "LORAMEM_TRAINER_METRICS_PORT": "0"},
    )
    try:
        people = phonebook(system.settings.data_dir, 6, offset=600)
        jobs = [
            system.post_facts([p.fact], module=f"pair-{i % 3}", tenant="workers")
            for i, p in enumerate(people)
        ]
        registry = Registry.from_url(E2E_REDIS_URL)
        finished, trained = [], {}
        for posted in jobs:
            job = system.wait_job(posted["job_id"], tenant="workers")
            finished.append(job)
            # Read at once: a replaced version's record is swept after the retention.
            module = module_id("workers", job["module"])
            version = registry.modules.version(module, job["version"])
            trained[job["id"]] = version.fact_ids
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        second.wait(timeout=30)
    events = [
        e
        for _id, e in registry.modules.events_after("0-0", block_ms=10)
        if e["type"] == "published"
    ]
    pair = module_id("workers", "pair-")
    pairs = [(e["module"], e["version"]) for e in events if e["module"].startswith(pair)]
    assert len(pairs) == len(set(pairs))  # no module version was published twice
    per_job = Counter(e["job_id"] for e in events)
    for posted, job in zip(jobs, finished, strict=True):
        # Every job ends published, at most once by itself; a job whose facts an earlier
        # version already covered is answered with that version (coalesced).
        assert job["status"] == "published" and per_job[job["id"]] <= 1
        assert set(posted["fact_ids"]) <= set(trained[job["id"]])
    for module in {j["module"] for j in finished}:
        in_order = [j["version"] for j in finished if j["module"] == module]
        assert in_order == sorted(in_order)  # versions never go backwards


def test_two_engines_keep_affinity_fail_over_and_refill_themselves(
    system: System, tmp_path: Path
) -> None:
    extra_port = 18101
    urls = ["http://127.0.0.1:18100", f"http://127.0.0.1:{extra_port}"]
    person = phonebook(system.settings.data_dir, 8, offset=700)
    # A module whose preferred engine is the extra one, so the suite's engine stays up.
    pool = EnginePool(urls, spill_in_flight=8)
    for url in urls:
        pool.mark(url, True)
    name = next(
        f"affinity-{i}"
        for i in range(100)
        if pool.candidates(version_name(module_id("e2e", f"affinity-{i}"), 1))[0] == urls[1]
    )
    system.wait_job(system.post_facts([person[0].fact], module=name)["job_id"])
    # What the engines serve it as: the name carries its checksum's digest.
    engine_name = Registry.from_url(E2E_REDIS_URL).modules.version(module_id("e2e", name), 1).served
    # Its own cache folder, shared with nothing: it fetches versions from Redis itself.
    cache = tmp_path / "extra-engine-cache"
    settings = system.settings.model_copy(
        update={"engine_port": extra_port, "engine_adapter_cache_dir": cache}
    )
    engine = spawn(engine_command(settings, system.model_path), engine_env(settings))
    gateway = spawn(
        [sys.executable, "-m", "cli", "gateway"],
        {**system.env, "LORAMEM_GATEWAY_PORT": "18001", "LORAMEM_ENGINE_URLS": ",".join(urls)},
    )
    client = httpx.Client(base_url="http://127.0.0.1:18001", timeout=300)
    try:
        wait_http(f"{urls[1]}/health", settings.engine_start_timeout_s, engine)
        wait_http("http://127.0.0.1:18001/healthz", 120, gateway)

        def ask() -> httpx.Response:
            body = {
                "model": name,
                "temperature": 0,
                "max_tokens": 24,
                "messages": [{"role": "user", "content": person[0].question}],
            }
            return client.post(
                "/v1/chat/completions", json=body, headers={"x-loramem-tenant": "e2e"}
            )

        _wait_served_by(ask, "1")  # once the gateway has seen the engine healthy
        # Published before the engine started and loaded by nobody: it fetched it itself.
        assert (cache / module_id("e2e", name) / "v1" / "adapter_model.safetensors").exists()
        served_by = {ask().headers["x-loramem-engine"] for _ in range(4)}
        assert served_by == {"1"}  # the same module sticks to the same engine

        os.killpg(engine.pid, signal.SIGKILL)
        engine.wait()
        after_kill = [ask() for _ in range(3)]
        assert all(r.status_code == 200 for r in after_kill)
        assert {r.headers["x-loramem-engine"] for r in after_kill} == {"0"}
        assert person[0].phone in answer(after_kill[0])

        shutil.rmtree(cache)  # restarted on an empty folder
        engine = spawn(engine_command(settings, system.model_path), engine_env(settings))
        wait_http(f"{urls[1]}/health", settings.engine_start_timeout_s, engine)
        _wait_served_by(ask, "1")  # affinity returns; the engine refills itself on demand
        _wait_loaded(urls[1], engine_name)
        assert (cache / module_id("e2e", name) / "v1" / "adapter_model.safetensors").exists()
    finally:
        for process in (gateway, engine):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=30)


def _wait_served_by(ask: Callable[[], httpx.Response], engine: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while (reply := ask()).headers.get("x-loramem-engine") != engine:
        assert reply.status_code == 200, reply.text
        assert time.monotonic() < deadline, f"engine {engine} did not serve within {timeout_s} s"
        time.sleep(1)


def _wait_loaded(engine_url: str, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        models = {
            m["id"]
            for m in httpx.get(f"{engine_url}/v1/models", headers=ENGINE_HEADERS).json()["data"]
        }
        if name in models:
            return
        time.sleep(0.5)
    pytest.fail(f"{name} was not loaded into {engine_url} within {timeout_s} s")


def test_the_jobs_stream_is_fully_acknowledged(system: System) -> None:
    assert Registry.from_url(E2E_REDIS_URL).queue.pending_count() == 0
