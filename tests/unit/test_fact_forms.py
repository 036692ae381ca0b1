"""The phrasings a module trains for each fact (loramem/fact_forms.py): the first two are
unchanged, a sentence's own question is derived from its words, and no trained phrasing
is one the evaluations ask (issue 15 measures questions worded unlike training)."""

from __future__ import annotations

import pytest

from evaluation.counterfact_relations import RELATIONS, paraphrase
from evaluation.routing import questions_for
from loramem.datasets import counterfact_edits, generated_phonebook, phonebook
from loramem.fact_forms import ATTRIBUTE_QUESTIONS, PREFIX_QUESTIONS, fact_form, wh_question
from loramem.knobs import TrainingKnobs
from loramem.settings import Settings

DATA = Settings().data_dir
MOST = TrainingKnobs.model_fields["questions_per_fact"].metadata[-1].le  # the knob's limit


def test_the_knob_can_ask_for_every_phrasing() -> None:
    assert MOST >= max(len(ATTRIBUTE_QUESTIONS), len(PREFIX_QUESTIONS))


def test_two_phrasings_are_the_ones_trained_before() -> None:
    # questions_per_fact 2 must keep training what modules trained before (arm A).
    phone = fact_form("The phone number of Jeffrey Buck is 603-556-7631.")
    assert phone.questions(2) == (
        "What is the phone number of Jeffrey Buck?",
        "The phone number of Jeffrey Buck is",
    )
    edit = fact_form("Lenta.ru is written in Italian")
    assert edit.questions(2) == (
        "Lenta.ru is written in",
        "Complete the statement: Lenta.ru is written in ...",
    )


@pytest.mark.parametrize(
    ("stem", "question"),
    [
        ("Lenta.ru is written in", "What is Lenta.ru written in?"),
        ("In Macau, an official language is", "In Macau, what is an official language?"),
        ("The official language of Kokkola is", "What is the official language of Kokkola?"),
        ("Anton Zeilinger works in the field of",
         "What does Anton Zeilinger work in the field of?"),
        ("Unkei, who has a citizenship from", "What does Unkei have a citizenship from?"),
        ("Bureau of Indian Standards can be found in",
         "What can Bureau of Indian Standards be found in?"),
        ("Triumph TR2, produced by", "What is Triumph TR2 produced by?"),
        ("Bukkene Bruse originated in", "What did Bukkene Bruse originate in?"),
        ("Eduardo Fajardo's profession is an", "What is Eduardo Fajardo's profession?"),
        ("Euclid specializes in", "What does Euclid specialize in?"),
        ("Pitchfork's headquarters are in", "What are Pitchfork's headquarters in?"),
        # no verb to move, or already a question: no question form
        ("Spain's capital city,", None),
        ("Leslie Moonves, of", None),
        ("What sport does Emmitt Smith play? They play", None),
    ],
)  # fmt: skip
def test_a_sentence_is_asked_by_moving_its_verb(stem: str, question: str | None) -> None:
    assert wh_question(stem) == question


def test_the_value_keeps_its_last_word_and_gives_its_function_words_to_the_question() -> None:
    form = fact_form("Pitchfork's headquarters are in Cairo")
    assert form.question_stem == "Pitchfork's headquarters are in"
    assert "What are Pitchfork's headquarters in?" in form.questions(MOST)


def test_a_sentence_without_a_question_form_trains_the_other_phrasings() -> None:
    questions = fact_form("Leslie Moonves, of ESPN").questions(MOST)
    assert len(questions) == len(PREFIX_QUESTIONS) - 2  # both "{question}" templates left out
    assert all("{" not in q for q in questions)
    assert questions[0] == "Leslie Moonves, of"  # the gate's question is always first


def test_more_phrasings_add_distinct_questions() -> None:
    for text in (
        "The phone number of Jeffrey Buck is 603-556-7631.",
        "Lenta.ru is written in Italian",
    ):
        form = fact_form(text)
        many = form.questions(MOST)
        assert len(set(many)) == len(many) > 2
        assert many[:2] == form.questions(2)


def test_no_trained_phrasing_is_a_phonebook_paraphrase_the_evals_ask() -> None:
    # evaluation/router_set.py PHONE_TEMPLATES (and the surname question), as phonebook-scale
    # and the router's set ask them, against everything a module may train: the real rows
    # where the data is present (generated ones otherwise, as every test falls back to).
    people = generated_phonebook(50) + phonebook(DATA, 500, allow_generated=True)
    for person in people:
        asked = {q for kind, q in questions_for(person, True) if kind != "stored"}
        assert not asked & set(fact_form(person.fact).questions(MOST)), person.fact


def test_no_trained_phrasing_is_a_counterfact_question_form() -> None:
    # Every relation template of the 4K file with a made-up subject and value, and the real
    # edits where the data is present.
    for relation in RELATIONS:
        for template in relation.templates:
            sentence = template.format(s="Zork Quillan") + " Velmoria"
            trained = fact_form(sentence).questions(MOST)
            assert relation.question.format(s="Zork Quillan") not in trained, template
    for edit in counterfact_edits(DATA, 0, allow_generated=True, size="4K"):
        assert paraphrase(edit) not in fact_form(edit.sentence).questions(MOST), edit.sentence
