"""A publish reaches model=auto routing within a second, with no restart: the gateway's
event follower over the real Redis, with the packaged embedding model (no engine)."""

from __future__ import annotations

import math
import threading
import time

from loramem.names import module_id
from loramem.registry import Registry
from loramem.registry.modules import VersionInfo
from loramem.settings import Settings
from router.embedder import SentenceEmbedder, to_bytes
from router.router import Router
from server.reconcile import EventFollower
from tests.recipes import TRAINED
from tests.recipes import merged as merged_recipe

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
            registry.modules.publish(VersionInfo(module, 1, "t", ids, 1.0, "c", TRAINED), {})
            lags[module] = _routed_after_publish_ms(registry, router, module, text)

        both = "What are the phone numbers of Ann Lee and Bob Ray?"
        sources = {module_id("t", "ann"): 1, module_id("t", "bob"): 1}
        job, queued = registry.merges.request("t", list(sources), settings.merge_combination, None)
        assert queued
        merged = VersionInfo(job.module, 1, "t", [], math.nan, "c", merged_recipe(sources), sources)
        registry.modules.publish(merged, {})
        lags["merged"] = _routed_after_publish_ms(registry, router, job.module, both, merge=True)
    finally:
        stop.set()
        follower.join(timeout=5)
    print(f"\npublish -> routed: {', '.join(f'{m} {ms:.0f} ms' for m, ms in lags.items())}")
    assert max(lags.values()) < 1000
