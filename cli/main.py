"""The `loramem` command line (console script `loramem`, or `python -m cli`)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cli import keys
from evaluation import cli as evaluation
from loramem.client import Client, GatewayError
from loramem.settings import Settings, get_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loramem", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run Redis (if needed), engine, worker and gateway")
    commands.add_parser("gateway", help="run the HTTP gateway")
    commands.add_parser("worker", help="run one trainer worker")
    commands.add_parser("engine", help="run the vLLM engine in the foreground")
    commands.add_parser("prepare-model", help="convert the base model into the cache")
    commands.add_parser(
        "migrate-keys", help="move a single Redis's keys to the hash-tagged layout (once)"
    )
    add = commands.add_parser("add", help="post facts and follow the training job")
    add.add_argument("facts", nargs="+")
    add.add_argument("--module")
    add.add_argument("--no-follow", action="store_true")
    job = commands.add_parser("job", help="follow a training job with a progress bar")
    job.add_argument("job_id")
    for sub in (add, job):
        sub.add_argument("--gateway", default=None, help="default: the configured gateway")
        sub.add_argument("--tenant", default="default")
    settings = get_settings()
    evaluation.add_parser(commands, settings)
    keys.add_parser(commands)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per engine poll otherwise

    if args.command == "eval":
        return evaluation.run(args, settings)
    if args.command == "keys":
        return keys.run(args, settings)

    if args.command == "run":
        from loramem.launcher import Launcher

        return Launcher(settings).run()
    if args.command == "gateway":
        from server.app import main as gateway_main

        gateway_main(settings)
        return 0
    if args.command == "worker":
        # Set before torch loads: idle OpenMP threads sleep instead of spinning, so that
        # training degrades gently when the engine on the same cores is busy (spinning
        # threads made steps up to 20x slower on 2 shared cores).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from trainer.worker import main as worker_main

        worker_main(settings)
        return 0
    if args.command == "engine":
        from loramem.base_model import prepare_base_model
        from loramem.engine import engine_command, engine_env

        command = engine_command(settings, prepare_base_model(settings))
        # Become the engine: a stop signal (a container's SIGTERM) then reaches vLLM
        # itself, where a child process would outlive this one.
        os.execve(command[0], command, engine_env(settings))
    if args.command == "prepare-model":
        from loramem.base_model import prepare_base_model

        print(prepare_base_model(settings))
        return 0
    if args.command == "migrate-keys":
        return migrate_keys(settings)
    return _client_command(args, settings)


def migrate_keys(settings: Settings) -> int:
    """Rename the keys of a single Redis from the layout before hash tags (run it with
    gateways and workers stopped; loramem/key_migration.py)."""
    from loramem.key_migration import migrate
    from loramem.redis_client import connect, is_cluster

    client = connect(settings.redis_url)
    if is_cluster(client):
        print("run it on the single Redis, before importing its keys into the cluster")
        return 1
    for kind, count in sorted(migrate(client).items()):
        print(f"{kind}: {count}")
    return 0


def _client_command(args: argparse.Namespace, settings: Settings) -> int:
    """`add` and `job`: talk to a running gateway through loramem's client."""
    memory = Client.from_settings(settings, args.gateway, tenant=args.tenant, timeout_s=30)
    try:
        if args.command == "add":
            reply = memory.add_facts(args.facts, module=args.module)
            print(f"job {reply['job_id']} -> module {reply['module']}")
            return 0 if args.no_follow else follow(memory, reply["job_id"])
        return follow(memory, args.job_id)
    except GatewayError as exc:
        print(exc.message, file=sys.stderr)
        return 1


def follow(memory: Client, job_id: str) -> int:
    """Show a job's training steps as a progress bar until it ends."""
    from tqdm import tqdm

    bar = tqdm(total=1, unit="step")

    def show(job: dict) -> None:
        progress = job.get("progress") or {}
        bar.total = progress.get("total_steps", bar.total)
        bar.n = progress.get("step", 0)
        bar.set_description(job["status"])
        if "loss" in progress:
            bar.set_postfix(loss=progress["loss"])
        bar.refresh()

    job = memory.wait_job(job_id, on_progress=show)
    bar.close()
    detail = f"v{job['version']}" if job["status"] == "published" else job["error"]
    print(f"{job['status']}: {job['module']} {detail}")
    for moved in (job.get("progress") or {}).get("moved_out", []):  # the per-fact gate
        print(
            f"moved out {len(moved['fact_ids'])} fact(s) to {moved['module']} "
            f"(job {moved['job_id']}): {moved['reason']}"
        )
    return 0 if job["status"] == "published" else 1


if __name__ == "__main__":
    sys.exit(main())
