"""A publish reaches model=auto routing within a second, with no restart: the gateway's
event follower over the real Redis, with the packaged embedding model (no engine). While
nothing happens the follower only waits in its blocking read."""

from __future__ import annotations

import math
import threading
import time

import pytest

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import SentenceEmbedder, to_bytes
from router.router import Router
from server.reconcile import EventFollower
from tests.recipes import NO_FILES, TRAINED
from tests.recipes import merged as merged_recipe
from tests.services import single_and_cluster  # noqa: F401  (each test on both)

ANN = "The phone number of Ann Lee is 555-0101."
BOB = "The phone number of Bob Ray is 555-0202."


def _routed_after_publish_ms(registry: Registry, router: Router, module: str, query: str,
                             merge: bool = False) -> float:  # fmt: skip
    """Milliseconds from the publish event (its id is Redis time) to routing there."""
    event_id, _event = registry.modules.events_after("0-0", block_ms=10)[-1]
    published_ms = int(event_id.split("-")[0])
    while router.route("t", "auto", query, merge=merge).module != module:
        assert time.time() * 1000 - published_ms < 5000, f"{module} never became routable"
        time.sleep(0.005)
    return time.time() * 1000 - published_ms


def test_published_modules_and_merges_are_routed_within_a_second(
    registry: Registry, settings: Settings
) -> None:
    router = Router.from_settings(registry, SentenceEmbedder(threads=1), settings)
    stop = threading.Event()
    follower = EventFollower(registry, router, stop)
    follower.start()
    try:
        lags = {}
        for module, text in ((module_id("t", "ann"), ANN), (module_id("t", "bob"), BOB)):
            _job, ids = registry.facts.add(
                "t", [text], [None], [to_bytes(router.embed([text])[0])], module
            )
            registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, NO_FILES, TRAINED), {})
            lags[module] = _routed_after_publish_ms(registry, router, module, text)

        both = "What are the phone numbers of Ann Lee and Bob Ray?"
        sources = {module_id("t", "ann"): 1, module_id("t", "bob"): 1}
        job, queued = registry.merges.request("t", list(sources), settings.merge_combination, None)
        assert queued
        merged = VersionInfo(
            job.module, 1, "t", [], math.nan, NO_FILES, merged_recipe(sources), sources
        )
        registry.modules.publish(merged, {})
        lags["merged"] = _routed_after_publish_ms(registry, router, job.module, both, merge=True)
    finally:
        stop.set()
        follower.join(timeout=5)
    print(f"\npublish -> routed: {', '.join(f'{m} {ms:.0f} ms' for m, ms in lags.items())}")
    assert max(lags.values()) < 1000


def _calls(registry: Registry, command: str) -> int:
    """How many times this Redis server has run `command` (INFO commandstats)."""
    stats = registry.queue._redis.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.split("|")[0] == command)


# A single Redis only: on a cluster an idle step polls every bucket's stream instead of
# blocking in one read (docs/ARCHITECTURE.md, "Redis Cluster").
@pytest.mark.parametrize("redis_kind", ["single"])
def test_an_idle_follower_only_waits_and_a_publish_wakes_the_reconciler(
    registry: Registry, settings: Settings
) -> None:
    router = Router.from_settings(registry, SentenceEmbedder(threads=1), settings)
    woken = threading.Event()
    follower = EventFollower(registry, router, threading.Event(), on_change=woken.set)
    before = {c: _calls(registry, c) for c in ("cmdstat_xread", "cmdstat_xinfo")}
    assert [follower.step(block_ms=50) for _ in range(4)] == [0, 0, 0, 0]
    # The counts are the whole server's: a follower left by an earlier test may read too
    # (a CI run saw 5), so this one's four blocking reads are a lower bound.
    assert _calls(registry, "cmdstat_xread") - before["cmdstat_xread"] >= 4
    assert _calls(registry, "cmdstat_xinfo") == before["cmdstat_xinfo"]  # no trim check
    assert not woken.is_set()
    module = module_id("t", "ann")
    _job, ids = registry.facts.add("t", [ANN], [None], [to_bytes(router.embed([ANN])[0])], module)
    registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, NO_FILES, TRAINED), {})
    assert follower.step(block_ms=1000) == 2  # the facts changed, then the publish
    assert woken.is_set() and router.route("t", "auto", ANN).module == module
