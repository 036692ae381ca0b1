"""A served name never names other weights, even after Redis is restored from an older
snapshot: real Redis (the snapshot is DUMP/RESTORE of every key), the real publisher and
adapter store, and the real EngineClient talking to an engine that answers the adapter
routes as vLLM 0.32 does (an httpx transport: no model needed). Version numbers still
only grow where a host or an engine remembers them; the served name's digest covers the
rest (loramem/names.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import redis

from loramem.adapter_store import RECIPE_FILE, AdapterStore, checksum
from loramem.engine import EngineClient
from loramem.names import module_id, served_name, version_of
from loramem.registry import Registry
from loramem.settings import Settings
from tests.integration.test_retention import adapter_files, make_worker
from tests.recipes import TRAINED
from trainer.outcomes import Artifact
from trainer.publisher import Publisher

M = module_id("t", "m")  # the module these tests publish, by its id


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The push path, where workers load each version into the engines by path (engines
    # without the resolver); with it, the floor from the engines' loaded names still holds.
    return settings.model_copy(update={"engine_resolver": False})


class VllmAdapters:
    """vLLM's adapter residency over HTTP: /v1/models, load and unload by name."""

    def __init__(self) -> None:
        self.loaded: dict[str, bytes] = {}  # served name -> the weights it was loaded with

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            names = ["base", *self.loaded]
            return httpx.Response(200, json={"data": [{"id": n} for n in names]})
        body = json.loads(request.content)
        name = body["lora_name"]
        if request.url.path == "/v1/unload_lora_adapter":
            self.loaded.pop(name, None)
            return httpx.Response(200, text="ok")
        if name in self.loaded:  # vLLM's own words (serving_models.py)
            message = f"The lora adapter '{name}' has already been loaded."
            return httpx.Response(400, json={"error": {"message": message}})
        weights = Path(body["lora_path"], "adapter_model.safetensors").read_bytes()
        self.loaded[name] = weights
        return httpx.Response(200, text="ok")


def engine(adapters: VllmAdapters) -> EngineClient:
    client = EngineClient("http://engine")
    client.http = httpx.Client(base_url="http://engine", transport=httpx.MockTransport(adapters))
    return client


def publish(
    publisher: Publisher,
    registry: Registry,
    module: str = M,
    files: dict[str, bytes] | None = None,
) -> tuple[str, bytes]:
    """Publish new weights (random unless `files`); their served name and the weights."""
    job, ids = registry.facts.add("t", [f"fact {module}"], [None], [b""], module=module)
    registry.jobs.skip_to_publishing(job.id, {})
    files = files or adapter_files(256)
    ref = publisher.publish(job, Artifact(module, files, TRAINED, ids, 1.0))
    return ref.name, files["adapter_model.safetensors"]


def number_of(name: str) -> int | None:
    """The version number in a served name of M."""
    parsed = version_of(name)
    return parsed[1] if parsed and parsed[0] == M else None


def snapshot(client: redis.Redis) -> dict[bytes, bytes]:
    return {key: client.dump(key) for key in client.scan_iter()}  # type: ignore[misc]


def restore(client: redis.Redis, saved: dict[bytes, bytes]) -> None:
    client.flushdb()
    for key, value in saved.items():
        client.restore(key, 0, value)


def test_after_a_restore_from_an_older_snapshot_a_new_version_gets_an_unused_name(
    settings: Settings, registry: Registry, redis_client: redis.Redis, tmp_path: Path
) -> None:
    adapters = VllmAdapters()
    ctx = make_worker(settings, registry).ctx
    publisher = Publisher(ctx, [engine(adapters)])
    names = {publish(publisher, registry)[0]}
    after_v1 = snapshot(redis_client)
    names |= {publish(publisher, registry)[0], publish(publisher, registry)[0]}
    assert sorted(map(number_of, names)) == [1, 2, 3]

    restore(redis_client, after_v1)  # Redis now believes v1 is the latest
    assert registry.modules.get(M).active_version == 1
    name, weights = publish(publisher, registry)
    print(f"\n[names] published before the restore: {sorted(names)}; after: {name}")
    assert name not in names and number_of(name) == 4
    assert adapters.loaded[name] == weights  # the engine serves the new weights under it

    # Engines restarted empty and this host's folders swept: the host's record remains.
    restore(redis_client, after_v1)
    adapters.loaded.clear()
    for version in (2, 3, 4):
        ctx.store.remove_local(M, version)
    assert number_of(publish(publisher, registry)[0]) == 5

    # A worker on another host (no folders of its own): the engines' loaded list remains.
    restore(redis_client, after_v1)
    other_host = replace(ctx, store=AdapterStore(tmp_path / "other", registry))
    elsewhere = Publisher(other_host, [engine(adapters)])
    assert number_of(publish(elsewhere, registry)[0]) == 6


def racing(settings: Settings, registry: Registry) -> tuple[VllmAdapters, Publisher]:
    """An engine and a publisher whose floor missed what the engine holds (a race)."""
    adapters = VllmAdapters()
    publisher = Publisher(make_worker(settings, registry).ctx, [engine(adapters)])
    publisher.unseen_floor = lambda module: 1  # type: ignore[method-assign]
    return adapters, publisher


def test_other_weights_under_the_new_number_keep_their_name_and_the_new_get_theirs(
    settings: Settings, registry: Registry
) -> None:
    adapters, publisher = racing(settings, registry)
    other = served_name(M, 1, checksum(adapter_files(256)))
    adapters.loaded[other] = b"other weights"
    name, weights = publish(publisher, registry)
    assert number_of(name) == 1 and name != other and adapters.loaded[name] == weights
    assert adapters.loaded[other] == b"other weights"  # not ours: left alone


def test_an_engine_that_already_has_the_new_name_makes_the_publisher_take_the_next(
    settings: Settings, registry: Registry
) -> None:
    adapters, publisher = racing(settings, registry)
    files = adapter_files(256)
    taken = served_name(M, 1, checksum({**files, RECIPE_FILE: TRAINED.to_json().encode()}))
    adapters.loaded[taken] = files["adapter_model.safetensors"]  # the same weights, loaded
    name, weights = publish(publisher, registry, files=files)
    assert number_of(name) == 2 and adapters.loaded[name] == weights
    assert adapters.loaded[taken] == weights  # not this publish's load: left alone


class Partitioned(VllmAdapters):
    """An engine the publisher cannot reach (a partition, a stall) that keeps what it has
    loaded, and serves it again once it is reachable."""

    reachable = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.reachable:
            raise httpx.ConnectError("unreachable", request=request)
        return super().__call__(request)


def test_after_a_restore_an_engine_out_of_reach_at_publish_never_serves_old_weights(
    settings: Settings, registry: Registry, redis_client: redis.Redis, tmp_path: Path
) -> None:
    restarted, away = VllmAdapters(), Partitioned()
    ctx = make_worker(settings, registry).ctx
    publisher = Publisher(ctx, [engine(restarted), engine(away)])
    publish(publisher, registry)
    after_v1 = snapshot(redis_client)
    old = dict([publish(publisher, registry), publish(publisher, registry)])  # v2, v3

    restore(redis_client, after_v1)
    restarted.loaded.clear()  # one engine restarted empty, the other out of reach
    away.reachable = False
    other_host = replace(ctx, store=AdapterStore(tmp_path / "other", registry))
    name, weights = publish(Publisher(other_host, [engine(restarted), engine(away)]), registry)
    away.reachable = True  # back: a gateway routes `name` to it too
    print(f"\n[names] before the restore: {sorted(old)}; after: {name}")
    assert name not in old
    assert away.loaded.get(name, weights) == weights
