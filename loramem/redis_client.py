"""The one place a Redis client is made: a single Redis, or a Redis Cluster when the URL's
scheme says so (`redis+cluster://host:port`, `rediss+cluster://` with TLS; any one node
of the cluster, the client finds the rest). The registry runs unchanged on both: every
transaction and script stays in one hash slot (loramem/keys.py), and the few commands
that span keys (a blocking read over every bucket) ask `is_cluster` first."""

from __future__ import annotations

from typing import Any, cast

import redis
from redis.cluster import RedisCluster

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
URL_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def connect(url: str, connect_timeout_s: float = 2.0, socket_timeout_s: float = 5.0) -> redis.Redis:
    """A client whose calls fail after the timeouts (redis.TimeoutError / ConnectionError)
    instead of hanging when Redis stops answering."""
    options: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
    }
    scheme, _, rest = url.partition("://")
    if scheme in CLUSTER_SCHEMES:
        cluster = RedisCluster.from_url(f"{CLUSTER_SCHEMES[scheme]}://{rest}", **options)
        # RedisCluster answers the same commands (and transactions on one slot); redis-py
        # types the two apart, so the registry is written against redis.Redis.
        return cast(redis.Redis, cluster)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)
