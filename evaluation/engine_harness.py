"""A vLLM engine for benchmarks and engine checks: child processes, random-weight modules.

`engine` starts loramem's engine command and waits for it to answer; `make_adapters`
builds modules of the default shape with random weights (the serving cost does not depend
on what an adapter holds, only on its shape); `load_adapters` registers them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from loramem.engine import engine_command, engine_env
from loramem.settings import Settings


@contextmanager
def process(
    name: str,
    command: list[str],
    env: dict[str, str],
    health_url: str,
    timeout_s: float,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """A child in its own process group, up once health_url answers; stopped on exit.
    (`cwd`: where `python -m` finds its package first, e.g. another checkout.)

    Its output goes to $LORAMEM_CACHE_DIR/bench-logs/<name>.log (only the tables here).
    """
    logs = Settings().cache_dir / "bench-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{name}.log").open("ab")
    child = subprocess.Popen(
        command, env=env, cwd=cwd, start_new_session=True, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(health_url):
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start (exit {child.poll()})")
            time.sleep(1.0)
        yield child
    finally:
        os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def engine(
    settings: Settings,
    model_path: Path,
    env: dict[str, str] | None = None,
    log_stats: bool = False,
) -> Iterator[str]:
    with engine_process(settings, model_path, env, log_stats) as (url, _):
        yield url


@contextmanager
def engine_process(
    settings: Settings,
    model_path: Path,
    env: dict[str, str] | None = None,
    log_stats: bool = False,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The engine's URL and its process (for a profiler). `log_stats`: keep vLLM's
    scheduler stats (its /metrics gauges), which loramem's engine command turns off, for a
    benchmark that reads them."""
    url = f"http://127.0.0.1:{settings.engine_port}"
    started = time.monotonic()
    environment = {**engine_env(settings), **(env or {})}
    command = engine_command(settings, model_path)
    if log_stats:
        command.remove("--disable-log-stats")
    with process("engine", command, environment, url + "/health", 600) as child:
        print(f"engine up in {time.monotonic() - started:.0f} s", flush=True)
        yield url, child


def make_adapters(
    settings: Settings, model_path: Path, out_dir: Path, count: int, std: float = 0.02
) -> list[Path]:
    """`count` modules of the default shape with random nonzero weights (kept for reuse)."""
    paths = [out_dir / f"bench-{i}" for i in range(count)]
    if all((p / "adapter_config.json").exists() for p in paths):
        return paths
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.train import make_peft_model

    config = settings.training.with_overrides({})
    model = make_peft_model(AutoModelForCausalLM.from_pretrained(model_path), config)
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    for i, path in enumerate(paths):
        torch.manual_seed(i)
        with torch.no_grad():  # LoRA B starts at zero; random A and B make a real delta
            for p in lora:
                p.normal_(0.0, std)
        model.save_pretrained(str(path))
    return paths


def load_adapters(url: str, paths: list[Path]) -> list[str]:
    names = []
    for path in paths:
        response = httpx.post(
            url + "/v1/load_lora_adapter",
            json={"lora_name": path.name, "lora_path": str(path)},
            timeout=60,
        )
        if response.status_code != 200 and "already been loaded" not in response.text:
            raise SystemExit(f"engine refused {path.name}: {response.text[:200]}")
        names.append(path.name)
    return names


def system_env(settings: Settings, source: Path | None = None) -> dict[str, str]:
    """The environment a worker or gateway child needs to join this system (its code
    from `source`, another checkout, when given)."""
    env = dict(os.environ)
    env.update(
        LORAMEM_ENGINE_URL=settings.engine_url,
        LORAMEM_GATEWAY_PORT=str(settings.gateway_port),
        LORAMEM_TRAINER_METRICS_PORT=str(settings.trainer_metrics_port),
        LORAMEM_REDIS_URL=settings.redis_url,
        LORAMEM_CACHE_DIR=str(settings.cache_dir),
    )
    if source is not None:
        env["PYTHONPATH"] = str(source)
    return env


def teach(url: str, headers: dict[str, str], facts: list[str], **extra: object) -> dict:
    """POST the facts to a gateway and wait until their job is published; the job."""
    started = time.monotonic()
    reply = httpx.post(url + "/facts", json={"facts": facts, **extra}, headers=headers, timeout=60)
    reply.raise_for_status()
    job_id = reply.json()["job_id"]
    while (job := httpx.get(f"{url}/jobs/{job_id}", headers=headers).json())["status"] not in (
        "published",
        "failed",
        "cancelled",
    ):
        time.sleep(2.0)
    print(f"gateway: job {job['status']} in {time.monotonic() - started:.0f} s", flush=True)
    if job["status"] != "published":
        raise SystemExit(f"training failed: {job.get('error')}")
    return job  # type: ignore[no-any-return]
