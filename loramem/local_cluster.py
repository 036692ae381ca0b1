"""A local Redis Cluster for tests and benchmarks: three masters (or as many as ports) from
`redis-server` on loopback, each in a temporary folder removed when it stops. The slots are
assigned and the nodes introduced over the cluster's own commands (what `redis-cli
--cluster create` does), so no redis-cli is needed."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

SLOTS = 16384


@contextmanager
def local_cluster(
    binary: str, ports: tuple[int, ...], started: Callable[[int], object] = lambda _pid: None
) -> Iterator[str]:
    """A real Redis Cluster of `len(ports)` masters, no replicas, from `binary`; yields
    its URL (`redis+cluster://`). Each node runs in a session of its own, whose id (its
    pid) goes to `started`."""
    folder = Path(tempfile.mkdtemp(prefix="loramem-cluster-"))
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            (folder / str(port)).mkdir()
            nodes.append(
                subprocess.Popen(
                    [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
                     "yes", "--cluster-config-file", "nodes.conf", "--save", "",
                     "--appendonly", "no", "--dir", str(folder / str(port))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )  # fmt: skip
            started(nodes[-1].pid)
        clients = [redis.Redis(port=p, socket_connect_timeout=1) for p in ports]
        _wait(lambda: all(_answers(c) for c in clients), "the cluster's nodes to start")
        share = -(-SLOTS // len(ports))
        for i, client in enumerate(clients):
            client.execute_command(
                "CLUSTER ADDSLOTS", *range(i * share, min((i + 1) * share, SLOTS))
            )
            client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
        _wait(lambda: all(_state_ok(c, len(ports)) for c in clients), "the cluster to form")
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _state_ok(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER INFO")  # redis-py parses it into a dict
    return info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == masters


def _wait(ready: Callable[[], bool], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)
