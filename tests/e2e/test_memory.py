"""Knowledge memory through the real path: many facts packed in a module, and edits that
contradict what the base model believes (the paper's PhoneBook and CounterFact)."""

from __future__ import annotations

import time

from loramem.datasets import counterfact_edits, phonebook
from tests.e2e.support import System, answer


def test_phonebook_48_facts_in_three_batches(system: System) -> None:
    people = phonebook(system.settings.data_dir, 48)  # the paper's 1K-token slice
    posted = time.monotonic()
    jobs = [
        system.post_facts([p.fact for p in people[start : start + 16]], tenant="pb48")
        for start in (0, 16, 32)
    ]
    # Packed into one module (capacity allows): the first batch trains it, the later ones
    # train alone into its deltas, which consolidation folds back in the background.
    first = jobs[0]["module"]
    assert all(j["module"] == first or j["module"].startswith(f"{first}-d") for j in jobs)
    finished = [system.wait_job(j["job_id"], tenant="pb48") for j in jobs]
    print(
        f"\n[e2e] 48 facts in 3 batches -> published in {time.monotonic() - posted:.0f} s; "
        f"steps {[j['progress'].get('step') for j in finished]}"
    )
    hits = 0
    for person in people:
        reply = system.chat(person.question, tenant="pb48")
        hits += person.phone in answer(reply)
    print(f"[e2e] PhoneBook-48 exact match with model=auto: {hits}/48")
    assert hits / 48 >= 0.98


def test_counterfact_edits_override_the_base_model(system: System) -> None:
    edits = counterfact_edits(system.settings.data_dir, 30)  # generated where data is missing
    base_hits = sum(
        e.target.lower() in answer(system.chat(e.prompt, model=system.settings.base_name)).lower()
        for e in edits
    )
    accepted = system.post_facts([e.sentence for e in edits], tenant="cf")
    system.wait_job(accepted["job_id"], tenant="cf")
    hits = 0
    for edit in edits:
        reply = system.chat(edit.prompt, tenant="cf")
        hits += edit.target.lower() in answer(reply).lower()
    count = len(edits)
    print(f"\n[e2e] CounterFact: new target {hits}/{count} after ingest, base {base_hits}/{count}")
    assert base_hits / count <= 0.10
    assert hits / count >= 0.90
