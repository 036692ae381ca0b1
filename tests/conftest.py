"""Shared fixtures, and the rule that a test's folder says what it needs:

  tests/unit/         fakes only: no Redis, no engine, no base-model training
  tests/integration/  the real Redis, real PEFT training, real embeddings
  tests/e2e/          the real vLLM engine, gateway and worker
  tests/chaos/        faults under load (killed workers and engines, Redis restarted or
                      paused): its own processes, and the e2e system where it needs one

Each test gets its folder's marker, so `pytest -m unit` (seconds, nothing running) or
`-m "not e2e"` selects a layer. The chaos suite runs a short form by default and its soak
counts with LORAMEM_CHAOS_SOAK=1 (tests/chaos/support.py).

After each test module, processes a test left running are killed and listed at the end of
the session (tests/leaks.py): a leaked engine or gateway otherwise answers, or holds a
port, in some later test far from its cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from loramem.redis_client import connect, is_cluster
from loramem.registry import Registry
from loramem.settings import Settings
from tests import leaks
from tests.e2e.support import System, run_system
from tests.services import redis_cluster, redis_db_url

TEST_REDIS_URL = redis_db_url(15)  # a database of its own, flushed per test
TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "integration", "e2e", "chaos")
NEEDS_REDIS = {"redis_client", "registry"}
SYSTEM_STOP = pytest.StashKey[contextlib.ExitStack]()
LEAKS = pytest.StashKey[list[str]]()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = item.path.relative_to(TESTS).parts[0]
        if layer not in LAYERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/{{{','.join(LAYERS)}}}/")
        fixtures = set(getattr(item, "fixturenames", ()))
        if layer == "unit" and fixtures & NEEDS_REDIS:
            raise pytest.UsageError(f"{item.nodeid}: a unit test uses fakes, not Redis")
        item.add_marker(layer)


class FakeEmbedder:
    """Bag of hashed words: texts sharing words get similar unit vectors. Unit tests only."""

    dim = 64

    def embed(self, texts: list[str]) -> np.ndarray:
        rows = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                rows[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            norm = np.linalg.norm(rows[i])
            rows[i] /= norm if norm else 1.0
        return rows


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real three-master Redis Cluster, started once per session when a test asks."""
    with redis_cluster() as url:
        yield url


@pytest.fixture(params=["single"])
def redis_kind(request: pytest.FixtureRequest) -> str:
    """Which Redis a test's registry uses; a module that must pass on both overrides this
    with `single_and_cluster` (tests/services.py)."""
    return str(request.param)


@pytest.fixture
def redis_url(redis_kind: str, request: pytest.FixtureRequest) -> str:
    if redis_kind == "cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return TEST_REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = connect(redis_url)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail(f"integration tests need Redis at {redis_url} (.ci/run starts one)")
    # A cluster client flushes every master; a single Redis only this suite's database.
    flush = client.flushall if is_cluster(client) else client.flushdb
    flush()
    yield client
    flush()


@pytest.fixture
def settings(tmp_path, redis_url: str) -> Settings:  # type: ignore[no-untyped-def]
    return Settings(
        redis_url=redis_url,
        cache_dir=tmp_path / "cache",
        engine_url="http://127.0.0.1:9",  # nothing listens: unit tests never reach an engine
        module_capacity_facts=8,
        # No rate windows by default: their counters are keys, and many tests count keys to
        # show that a refused request stores nothing (test_limits.py sets its own windows).
        rate_requests_per_window=0,
        rate_tokens_per_window=0,
    )


@pytest.fixture
def registry(redis_client: redis.Redis, settings: Settings) -> Registry:
    return Registry(redis_client, settings.module_capacity_facts)


@pytest.fixture(scope="session")
def system(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    """The real system (engine, gateway, worker), started once per session for the e2e and
    chaos tests that ask for it; here so that both folders share the one instance. It stops
    after the last test that asks for it (pytest_runtest_teardown), not at the session's
    end: the layers after it run without an idle engine beside them."""
    with contextlib.ExitStack() as stop:
        request.config.stash[SYSTEM_STOP] = stop
        yield stop.enter_context(contextlib.contextmanager(run_system)(tmp_path_factory))


def pytest_runtest_setup(item: pytest.Item) -> None:
    leaks.mark(item.nodeid)  # children started from now on name this test


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator:
    result = yield
    items = item.session.items
    later = items[items.index(item) + 1 :] if nextitem is not None else []
    stop = item.config.stash.get(SYSTEM_STOP, None)
    if stop is not None and not any("system" in getattr(i, "fixturenames", ()) for i in later):
        del item.config.stash[SYSTEM_STOP]
        stop.close()  # no later test needs the e2e system
    if nextitem is None or nextitem.path != item.path:  # the module's fixtures are gone too
        found = leaks.find()
        leaks.kill(found)
        item.config.stash.setdefault(LEAKS, []).extend(
            f"after {item.path.name} ({leak.owner}): pid {leak.pid} {leak.command}"
            for leak in found
        )
    return result


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    found = terminalreporter.config.stash.get(LEAKS, [])
    if found:
        terminalreporter.section("processes left running by tests (killed)")
        for line in found:
            terminalreporter.line(line)
