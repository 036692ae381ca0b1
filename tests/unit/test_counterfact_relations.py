"""CounterFact's relation templates, paraphrases and locality prompts, on the real edit
files where they are present (and on the generated stand-ins always); the locality
summary of the eval against hand-counted answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from evaluation.client import Answer
from evaluation.counterfact import locality
from evaluation.counterfact_relations import (
    RELATIONS,
    LocalityPrompt,
    locality_prompts,
    paraphrase,
    relation_of,
)
from loramem.datasets import COUNTERFACT_SIZES, Edit, counterfact_edits
from loramem.settings import Settings

DATA = Settings().data_dir
REAL = (DATA / "counterfact" / "counterfact_edit_4K.csv").exists()
real_data = pytest.mark.skipif(not REAL, reason="the paper's CounterFact files are missing")


@real_data
def test_every_edit_of_the_4k_file_has_a_relation_and_a_subject() -> None:
    edits = counterfact_edits(DATA, 0, size="4K")
    assert len(edits) == 434
    assert all(e.subject and e.subject in e.prompt for e in edits)
    unknown = [e.sentence for e in edits if relation_of(e) is None]
    assert unknown == []


@real_data
def test_the_smaller_files_are_prefixes_of_the_4k_file() -> None:
    # Locality subjects are checked against the 4K file's only because of this.
    largest = counterfact_edits(DATA, 0, size=COUNTERFACT_SIZES[-1])
    for size in COUNTERFACT_SIZES[:-1]:
        edits = counterfact_edits(DATA, 0, size=size)
        assert edits == largest[: len(edits)]


def test_the_generated_stand_ins_have_relations_too(tmp_path: Path) -> None:
    edits = counterfact_edits(tmp_path, 0)
    assert edits and all(relation_of(e) is not None for e in edits)


def test_count_and_size_choose_the_rows(tmp_path: Path) -> None:
    assert len(counterfact_edits(tmp_path, 3)) == 3
    with pytest.raises(ValueError, match="CounterFact size"):
        counterfact_edits(tmp_path, 3, size="8K")


def test_a_paraphrase_asks_for_the_subject_in_a_question_not_the_prompt() -> None:
    edit = Edit("Lenta.ru is written in Italian", "Lenta.ru is written in", "Italian", "Lenta.ru")
    assert paraphrase(edit) == "In which language is Lenta.ru written?"
    unknown = Edit("Lenta.ru is fond of Italian", "Lenta.ru is fond of", "Italian", "Lenta.ru")
    assert paraphrase(unknown) is None
    assert paraphrase(Edit(edit.sentence, edit.prompt, edit.target)) is None  # no subject


def test_relations_share_no_template_and_ask_about_the_subject() -> None:
    templates = [t for r in RELATIONS for t in r.templates]
    assert len(templates) == len(set(templates))
    assert all("{s}" in t for t in templates)
    assert all("{s}" in r.question and r.question.endswith("?") for r in RELATIONS)


def test_locality_prompts_fill_an_edits_template_with_unedited_subjects() -> None:
    edits = [
        Edit("Lenta.ru is written in Italian", "Lenta.ru is written in", "Italian", "Lenta.ru"),
        Edit("Exame is written in Russian", "Exame is written in", "Russian", "Exame"),
        Edit("Exame was written in Russian", "Exame was written in", "Russian", "Exame"),
    ]
    edited = {"Lenta.ru", "Exame", "Le Figaro"}  # as if an edit file named Le Figaro
    prompts = locality_prompts(edits, 10, edited)
    assert [p.prompt for p in prompts] == [
        "Der Spiegel is written in",
        "The Guardian is written in",
        "El País was written in",
    ]
    assert all(p.subject not in edited for p in prompts)
    assert prompts[0].near_edit == edits[0].sentence
    assert len(locality_prompts(edits, 2, edited)) == 2


@real_data
def test_the_4k_file_gives_hundreds_of_distinct_unedited_prompts() -> None:
    edits = counterfact_edits(DATA, 0, size="4K")
    edited = {e.subject for e in edits}
    prompts = locality_prompts(edits, 10_000, edited)
    assert len(prompts) > 300
    assert len({p.prompt for p in prompts}) == len(prompts)
    assert not any(p.subject in edited for p in prompts)


def test_locality_counts_answers_like_base_and_where_the_router_sent_them() -> None:
    prompts = [LocalityPrompt(f"p{i}", "s", "r", "e") for i in range(4)]
    base = [Answer(t, "base") for t in ("Paris", "French", "Rome", "Oslo")]
    arm = [
        Answer("Paris ", "base"),  # routed to base, same answer (whitespace aside)
        Answer("French", "m1@v1"),  # a module answered, but as base did
        Answer("Italian", "m1@v1", outcome="module"),  # a module changed the answer
        Answer("Bergen", "base"),  # base, yet different: batching noise, shown apart
    ]
    summary = locality(prompts, base, arm)
    assert summary["same_as_base"] == 0.5
    assert summary["routed_to_base"] == 0.5
    assert summary["routed_to_a_module"] == 2
    assert summary["same_when_routed_to_a_module"] == 0.5
    assert summary["same_when_routed_to_base"] == 0.5
    assert summary["outcomes"] == {"none": 3, "module": 1}
    assert [c["prompt"] for c in summary["changed_examples"]] == ["p2", "p3"]
