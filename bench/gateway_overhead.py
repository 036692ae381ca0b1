"""The gateway's own cost at concurrency 1: `model=auto` through the gateway against the
same module on the engine directly, the same prompts, alternately, in one run.

    flock /tmp/loramem-engine.lock .venv/bin/python -m bench.gateway_overhead
    ... --gateway before=/path/to/an/older/checkout   # a second gateway, its code from there
    .venv/bin/python -m bench.gateway_overhead --engine null    # no engine: no lock needed

One engine (loramem's engine command), a worker and the gateway(s) on one Redis. Four
facts are taught for real (a short training: the module's weights do not change what the
gateway costs), then each prompt goes once to every target in turn, one request at a
time, the order rotated every round: the engine directly with the module's engine name,
and each gateway with `model=auto` (embedding, routing, forwarding). Answers are short
(`--max-tokens`, `ignore_eos`) so that the gateway's part is visible next to the
engine's. Prints p50/p90 per target, the difference to the engine (of the p50s, and the
median of the per-round differences), each gateway's own server-side time per stage
(loramem_gateway_stage_seconds), and with `--profile` the gateway frames py-spy sampled
during an extra pass.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from evaluation.engine_harness import engine, process, system_env, teach
from evaluation.serving_stats import FACTS, QUESTIONS, chat_body, percentile
from loramem.base_model import prepare_base_model
from loramem.engine import engine_headers
from loramem.names import module_id
from loramem.registry import Registry
from loramem.settings import Settings
from server.metrics import STAGE_METRIC_NAME


@dataclass
class Target:
    label: str
    url: str
    model: str
    headers: dict[str, str]
    pid: int | None = None  # a gateway's process (for py-spy)
    latencies_s: list[float] = field(default_factory=list)


def ask(client: httpx.Client, target: Target, question: str, max_tokens: int) -> httpx.Response:
    reply = client.post(
        target.url + "/v1/chat/completions",
        json=chat_body(target.model, question, max_tokens),
        headers=target.headers,
    )
    reply.raise_for_status()
    return reply


def alternate(
    targets: list[Target], rounds: int, max_tokens: int, expected_module: str
) -> list[list[float]]:
    """`rounds` prompts, each to every target in turn (order rotated per round); returns
    each round's latencies in the order of `targets`."""
    per_round = []
    with httpx.Client(timeout=300) as client:  # keep-alive, as a real client would
        for i in range(rounds):
            question = QUESTIONS[i % len(QUESTIONS)]
            row = [0.0] * len(targets)
            for k in range(len(targets)):
                j = (i + k) % len(targets)
                started = time.perf_counter()
                reply = ask(client, targets[j], question, max_tokens)
                row[j] = time.perf_counter() - started
                served = reply.headers.get("x-loramem-module", expected_module)
                if served != expected_module:
                    raise SystemExit(f"{targets[j].label} answered from {served}")
            for target, latency in zip(targets, row, strict=True):
                target.latencies_s.append(latency)
            per_round.append(row)
    return per_round


def stage_sums(url: str) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, count) from a gateway's /metrics."""
    sums: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        if family.name != STAGE_METRIC_NAME:
            continue
        for sample in family.samples:
            kind = sample.name.rsplit("_", 1)[1]
            if kind in ("sum", "count"):
                sums.setdefault(sample.labels["stage"], [0.0, 0.0])[kind == "count"] = sample.value
    return {stage: (s, n) for stage, (s, n) in sums.items()}


def stage_means(before: dict, after: dict) -> dict[str, float]:
    means = {}
    for stage, (s, n) in after.items():
        s0, n0 = before.get(stage, (0.0, 0.0))
        if n > n0:
            means[stage] = (s - s0) / (n - n0)
    return means


def profiled(target: Target, requests: int, max_tokens: int, out: Path) -> Counter[str]:
    """py-spy samples of the gateway (non-blocking) over `requests` more requests:
    samples per frame of loramem's gateway code and the libraries on its hot path."""
    raw = out / f"{target.label}.pyspy.txt"
    spy = subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(target.pid)]
        + ["--rate", "200"]
        + ["--nonblocking", "--format", "raw", "--output", str(raw)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)  # attached
    with httpx.Client(timeout=300) as client:
        for i in range(requests):
            ask(client, target, QUESTIONS[i % len(QUESTIONS)], max_tokens)
    spy.send_signal(2)  # SIGINT: py-spy writes the file and exits
    spy.wait(timeout=60)
    frames: Counter[str] = Counter()  # "total": every sample, for the shares
    wanted = re.compile(r"(^|/)(server|router|loramem|onnxruntime|httpx|redis|fastapi|starlette)/")
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames["total"] += int(count)
        seen = set()
        for frame in stack.split(";"):
            where = re.match(r"(.+) \((.+?):\d+\)$", frame)
            if where and wanted.search(where[2]) and where[1] not in seen:
                seen.add(where[1])
                frames[f"{where[1]} ({Path(where[2]).parent.name}/{Path(where[2]).name})"] += int(
                    count
                )
    return frames


def table(targets: list[Target], rounds: list[list[float]]) -> str:
    engine_p50 = percentile(targets[0].latencies_s, 50)
    lines = [
        "| target | requests | p50 ms | p90 ms | p50 - engine p50 ms | median paired diff ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for j, t in enumerate(targets):
        p50, p90 = percentile(t.latencies_s, 50), percentile(t.latencies_s, 90)
        paired = percentile([row[j] - row[0] for row in rounds], 50)
        lines.append(
            f"| {t.label} | {len(t.latencies_s)} | {1000 * p50:.1f} | {1000 * p90:.1f} | "
            f"{1000 * (p50 - engine_p50):+.1f} | {1000 * paired:+.1f} |"
        )
    return "\n".join(lines)


def _sources(pairs: list[str]) -> list[tuple[str, Path | None]]:
    out: list[tuple[str, Path | None]] = [("gateway", None)]
    for pair in pairs:
        label, _, path = pair.partition("=")
        out.append((f"gateway {label}", Path(path).resolve()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="prompts per target")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--train-steps", type=int, default=10, help="the module's training")
    parser.add_argument(
        "--gateway", action="append", default=[], help="LABEL=CHECKOUT: another gateway"
    )
    parser.add_argument("--profile", type=int, default=0, help="py-spy over N more requests")
    parser.add_argument(
        "--engine",
        choices=["vllm", "null"],
        default="vllm",
        help="null: bench/null_engine.py answers at once (the gateway's own cost alone)",
    )
    args = parser.parse_args()
    settings = Settings()  # ports, Redis and cache folder from LORAMEM_* as for the system
    model_path = prepare_base_model(settings)  # the worker trains on it in both modes
    tenant = {"x-loramem-tenant": f"bench-{uuid.uuid4().hex[:8]}"}
    me = [sys.executable, "-m", "cli"]
    with ExitStack() as stack:
        if args.engine == "vllm":
            engine_url = stack.enter_context(engine(settings, model_path))
        else:  # what the gateway adds with no model server on the cores
            engine_url = f"http://127.0.0.1:{settings.engine_port}"
            null = [sys.executable, "-m", "bench.null_engine", "--port", str(settings.engine_port)]
            stack.enter_context(
                process("null-engine", null, dict(os.environ), engine_url + "/health", 60)
            )
        worker = process(
            "worker", me + ["worker"], system_env(settings), engine_url + "/health", 60
        )
        stack.enter_context(worker)
        gateways: list[Target] = []
        for i, (label, source) in enumerate(_sources(args.gateway)):
            config = settings.model_copy(update={"gateway_port": settings.gateway_port + i})
            url = f"http://127.0.0.1:{config.gateway_port}"
            env = system_env(config, source)
            name = label.replace(" ", "-")
            gateway = process(name, me + ["gateway"], env, url + "/healthz", 180, source)
            child = stack.enter_context(gateway)
            gateways.append(Target(label, url, "auto", tenant, child.pid))
        run(args, settings, engine_url, gateways, tenant)


def run(
    args: argparse.Namespace,
    settings: Settings,
    engine_url: str,
    gateways: list[Target],
    tenant: dict[str, str],
) -> None:
    training = {"recall_gate": 0.0, "max_steps": args.train_steps}
    job = teach(gateways[0].url, tenant, list(FACTS), training=training)
    module = module_id(tenant["x-loramem-tenant"], job["module"])
    # The engine knows the version by its served name, which carries its digest.
    engine_name = Registry.from_settings(settings).modules.version(module, job["version"]).served
    expected = f"{job['module']}@v{job['version']}"
    label = "engine direct" if args.engine == "vllm" else "null engine direct"
    direct = Target(label, engine_url, engine_name, engine_headers(settings.engine_api_key))
    targets = [direct, *gateways]
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=300) as client:
        for target in targets:  # every gateway has applied the publish; warm every path
            while ask(client, target, QUESTIONS[0], 1).headers.get("x-loramem-module") not in (
                None,
                expected,
            ):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{target.label} does not route to {expected}")
                time.sleep(0.5)
            for question in QUESTIONS:
                ask(client, target, question, args.max_tokens)
    before = {g.label: stage_sums(g.url) for g in gateways}
    rounds = alternate(targets, args.requests, args.max_tokens, expected)
    print(
        f"\n{args.requests} prompts per target, concurrency 1, max_tokens {args.max_tokens}, "
        f"module {expected}\n"
    )
    print(table(targets, rounds))
    for g in gateways:
        means = stage_means(before[g.label], stage_sums(g.url))
        parts = ", ".join(f"{stage} {1000 * s:.2f}" for stage, s in means.items())
        print(f"\n{g.label}, server side, mean ms per request: {parts or 'no stage metrics'}")
    if args.profile:
        out = Path(tempfile.mkdtemp(prefix="gateway-profile-"))
        for g in gateways:
            frames = profiled(g, args.profile, args.max_tokens, out)
            total = frames.pop("total", 0) or 1
            print(f"\n{g.label}: py-spy, {total} samples over {args.profile} requests ({out})")
            for frame, count in frames.most_common(25):
                print(f"  {count:6d} {100 * count / total:5.1f}%  {frame}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
