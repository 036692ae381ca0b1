"""Forgetting that holds, on the real system: once a delete publishes a new version, the
old one is never served again, and its files leave the host and Redis after retention."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import redis

from loramem import keys
from loramem.datasets import phonebook
from loramem.names import module_id, version_of
from tests.e2e.support import E2E_REDIS_URL, ENGINE_HEADERS, System

TENANT = {"x-loramem-tenant": "e2e"}


def test_a_deleted_facts_old_version_is_not_served_and_its_files_go(system: System) -> None:
    people = phonebook(system.settings.data_dir, 2, offset=1200)
    accepted = system.post_facts([p.fact for p in people], module="forget")
    assert system.wait_job(accepted["job_id"])["version"] == 1
    assert system.chat(people[0].question, model="forget@v1").status_code == 200

    delete = system.gateway.delete(f"/facts/{accepted['fact_ids'][0]}", headers=TENANT)
    assert delete.status_code == 202
    assert system.wait_job(delete.json()["job_id"])["version"] == 2

    old = system.chat(people[0].question, model="forget@v1")
    assert old.status_code == 404, old.text
    assert old.json()["error"]["type"] == "model_not_found"
    current = system.chat(people[1].question, model="forget@v2")
    assert current.status_code == 200 and current.headers["x-loramem-module"] == "forget@v2"

    settings = system.settings
    module = module_id("e2e", "forget")  # what Redis, the folders and the engine know
    folder = Path(settings.adapters_path) / module / "v1"
    client = redis.Redis.from_url(E2E_REDIS_URL)
    engine = "http://127.0.0.1:18100/v1/models"

    def old_version_left() -> list[str]:
        served = {
            m["id"] for m in httpx.get(engine, headers=ENGINE_HEADERS, timeout=10).json()["data"]
        }
        return [
            what
            for what, present in [
                ("folder", folder.exists()),
                ("blob", client.exists(keys.version_files(module, 1))),
                ("record", client.exists(keys.version(module, 1))),
                ("engine", any(version_of(n) == (module, 1) for n in served)),
            ]
            if present
        ]

    budget_s = settings.retired_version_retention_s + settings.retire_grace_s + 60
    deadline = time.monotonic() + budget_s
    while (left := old_version_left()) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, f"still there after {budget_s:.0f} s: {left}"
    assert (folder.parent / "v2").exists() and client.exists(keys.version_files(module, 2))
    assert system.chat(people[0].question, model="forget@v1").status_code == 404
