"""The engine is internal: without its key it refuses what the gateway asks of it, while
the gateway (which holds the key) still answers."""

from __future__ import annotations

import httpx

from tests.e2e.support import ENGINE_HEADERS, System, answer

ENGINE = "http://127.0.0.1:18100"


def test_the_engine_refuses_requests_without_its_key(system: System) -> None:
    load = {"lora_name": "intruder", "lora_path": str(system.settings.adapters_path)}
    chat = {
        "model": system.settings.base_name,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4,
    }
    wrong = {"Authorization": "Bearer not-the-key"}
    for headers in ({}, wrong):
        refused = httpx.post(f"{ENGINE}/v1/load_lora_adapter", json=load, headers=headers)
        assert refused.status_code == 401, refused.text
        refused = httpx.post(f"{ENGINE}/v1/chat/completions", json=chat, headers=headers)
        assert refused.status_code == 401, refused.text
    assert httpx.get(f"{ENGINE}/v1/models", headers=ENGINE_HEADERS).status_code == 200

    assert answer(system.chat("Say hello.", model=system.settings.base_name))
