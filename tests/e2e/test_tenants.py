"""Module names per tenant on the real engine: two tenants each teach a module named
`notes` one fact, and each one's `notes` answers with its own fact and not the other's,
under the name `notes@v1`, never the engine's name that holds the tenant."""

from __future__ import annotations

import json

from loramem.datasets import phonebook
from tests.e2e.support import System, answer


def test_two_tenants_with_a_module_named_alike_get_their_own_answers(system: System) -> None:
    first, second = phonebook(system.settings.data_dir, 2, offset=420)
    people = {"e2e-t1": (first, second), "e2e-t2": (second, first)}  # (own, the other's)
    jobs = {
        tenant: system.post_facts([own.fact], tenant=tenant, module="notes")["job_id"]
        for tenant, (own, _other) in people.items()
    }
    for tenant, job_id in jobs.items():
        assert system.wait_job(job_id, tenant=tenant)["module"] == "notes"
    for tenant, (own, other) in people.items():
        reply = system.chat(own.question, model="notes", tenant=tenant)
        assert reply.headers["x-loramem-module"] == "notes@v1"
        assert reply.json()["model"] == "notes@v1"
        assert own.phone in answer(reply), (tenant, answer(reply))
        unknown = answer(system.chat(other.question, model="notes", tenant=tenant))
        assert other.phone not in unknown, (tenant, unknown)
        with system.gateway.stream(
            "POST",
            "/v1/chat/completions",
            headers={"x-loramem-tenant": tenant},
            json={"model": "notes", "stream": True, "max_tokens": 4, "messages": [
                {"role": "user", "content": own.question}
            ]},
        ) as stream:  # fmt: skip
            chunks = [json.loads(line[6:]) for line in stream.iter_lines()
                      if line.startswith("data: {")]  # fmt: skip
        assert chunks and {c["model"] for c in chunks} == {"notes@v1"}
