"""The real system for end-to-end tests: vLLM engine, gateway and trainer worker on Redis.

Started once per test session, on its own ports and Redis database, the first time an e2e
test asks for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from loramem.base_model import prepare_base_model
from loramem.engine import engine_command, engine_env
from loramem.settings import Settings
from tests import leaks
from tests.services import redis_db_url

E2E_REDIS_URL = redis_db_url(14)
JOB_TIMEOUT_S = 900
# The engine's own key: the gateway and worker send it; a test talking to the engine
# directly sends ENGINE_HEADERS (tests/e2e/test_internal.py checks it is refused without).
ENGINE_KEY = "e2e-engine-key"
ENGINE_HEADERS = {"Authorization": f"Bearer {ENGINE_KEY}"}


@dataclass
class System:
    settings: Settings
    env: dict[str, str]
    model_path: Path
    gateway: httpx.Client
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start_worker(self) -> None:
        self.processes["worker"] = spawn([sys.executable, "-m", "cli", "worker"], self.env)
        leaks.keep(self.processes["worker"].pid)  # the session's, not a test's

    def post_facts(self, facts: list[str], tenant: str = "e2e", **extra) -> dict:
        reply = self.gateway.post(
            "/facts", json={"facts": facts, **extra}, headers={"x-loramem-tenant": tenant}
        )
        assert reply.status_code == 202, reply.text
        return reply.json()

    def wait_job(
        self, job_id: str, tenant: str = "e2e", until: set[str] | None = None, min_step: int = 0
    ) -> dict:
        until = until or {"published"}
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = self.gateway.get(f"/jobs/{job_id}", headers={"x-loramem-tenant": tenant}).json()
            if job["status"] in until and job["progress"].get("step", 0) >= min_step:
                return job
            if job["status"] == "failed" and "failed" not in until:
                pytest.fail(f"job failed: {job['error']}")
            time.sleep(0.5)
        pytest.fail(f"job {job_id} did not reach {until} in {JOB_TIMEOUT_S} s")

    def chat(
        self, question: str, model: str = "auto", tenant: str = "e2e", **extra
    ) -> httpx.Response:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "temperature": 0,
            "max_tokens": 32,
            **extra,
        }
        return self.gateway.post(
            "/v1/chat/completions", json=body, headers={"x-loramem-tenant": tenant}
        )


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, start_new_session=True)


def wait_http(url: str, timeout_s: float, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, f"process for {url} exited with {process.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    pytest.fail(f"{url} not ready in {timeout_s} s")


def run_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    overrides = {
        "LORAMEM_REDIS_URL": E2E_REDIS_URL,
        "LORAMEM_ENGINE_PORT": "18100",
        "LORAMEM_ENGINE_URL": "http://127.0.0.1:18100",
        "LORAMEM_GATEWAY_PORT": "18000",
        "LORAMEM_ADAPTER_DIR": str(tmp_path_factory.mktemp("adapters")),
        # The engine's own folder, which its resolver fills from Redis.
        "LORAMEM_ENGINE_ADAPTER_CACHE_DIR": str(tmp_path_factory.mktemp("engine-adapters")),
        "LORAMEM_JOB_CLAIM_IDLE_MS": "5000",
        "LORAMEM_TRAINER_METRICS_PORT": "18200",
        "LORAMEM_RETIRE_GRACE_S": "5",
        "LORAMEM_ENGINE_API_KEY": ENGINE_KEY,
        # Retired versions' files go soon (tests/e2e/test_retention.py waits for it); long
        # enough that a test reading a just-replaced version still finds its record.
        "LORAMEM_RETIRED_VERSION_RETENTION_S": "60",
        # Every linear layer LoRA-ready: the eval's `targets` arms train attention modules.
        "LORAMEM_ENGINE_LORA_MODULES": "all",
        # A two-person question scores its two people's facts up to 0.19 apart on the
        # paper's PhoneBook (99th percentile of 200 pairs); the default margin of 0.1 groups
        # only 3 in 4 of them, and the merge test must not depend on which names it drew.
        "LORAMEM_ROUTER_MERGE_MARGIN": "0.3",
        # No background consolidation: between tests it would retrain on the cores the
        # engine answers on (it held a test's job 180 steps in one CI run). Its own tests,
        # with real training, are tests/integration/test_deltas.py.
        "LORAMEM_CONSOLIDATE_DELTAS": "1000000",
        "LORAMEM_CONSOLIDATE_AFTER_S": "1000000000",
    }
    env = {**os.environ, **overrides, "HF_HUB_OFFLINE": "1"}
    settings = Settings(**{k.removeprefix("LORAMEM_").lower(): v for k, v in overrides.items()})
    redis.Redis.from_url(E2E_REDIS_URL).flushdb()
    model_path = prepare_base_model(settings)
    gateway = httpx.Client(base_url="http://127.0.0.1:18000", timeout=300)
    sys_ = System(settings, env, model_path, gateway)
    try:
        started = time.monotonic()
        sys_.processes["engine"] = spawn(engine_command(settings, model_path), engine_env(settings))
        leaks.keep(sys_.processes["engine"].pid)
        wait_http(
            "http://127.0.0.1:18100/health",
            settings.engine_start_timeout_s,
            sys_.processes["engine"],
        )
        print(f"\n[e2e] engine ready in {time.monotonic() - started:.0f} s")
        sys_.start_worker()
        sys_.processes["gateway"] = spawn([sys.executable, "-m", "cli", "gateway"], env)
        leaks.keep(sys_.processes["gateway"].pid)
        wait_http("http://127.0.0.1:18000/healthz", 120, sys_.processes["gateway"])
        yield sys_
    finally:
        # Whole process groups: the engine's EngineCore and the gateway's embedder are
        # children that can outlive a leader that died first.
        for process in sys_.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in sys_.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)
            process.wait()
            leaks.release(process.pid)


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # the whole group has ended
        pass


def answer(reply: httpx.Response) -> str:
    assert reply.status_code == 200, reply.text
    return str(reply.json()["choices"][0]["message"]["content"])
