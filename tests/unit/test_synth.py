import json

import httpx

from loramem.fact_forms import split_prefix
from loramem.settings import Settings
from trainer.synth import LLMGenerator, TemplateGenerator, fact_qa, make_generator


def test_attribute_sentence_becomes_questions_about_the_attribute() -> None:
    qa = fact_qa("f1", "The phone number of Jeffrey Buck is 603-556-7631.", 3)
    assert qa.questions[0] == "What is the phone number of Jeffrey Buck?"
    assert qa.questions[1] == "The phone number of Jeffrey Buck is"
    assert len(set(qa.questions)) == 3
    assert qa.expected == "603-556-7631"
    assert qa.answer == "The phone number of Jeffrey Buck is 603-556-7631."


def test_other_sentences_are_asked_by_their_opening() -> None:
    qa = fact_qa("f2", "Lenta.ru is written in Italian", 2)
    assert qa.questions[0] == "Lenta.ru is written in"
    assert qa.expected == "Italian"
    assert qa.answer.endswith("Italian.")


def test_split_prefix_keeps_a_value() -> None:
    assert split_prefix("Nate Schierholtz professionally plays the sport hockey") == (
        "Nate Schierholtz professionally plays the sport",
        "hockey",
    )
    assert split_prefix("Hello")[1] == "Hello"


def test_formats_choose_the_training_pairs() -> None:
    qa = fact_qa("f", "The phone number of Jeffrey Buck is 603-556-7631.", 2)
    only_qa = qa.pairs("qa")
    assert [p for p, _ in only_qa] == list(qa.questions)
    rewrite = qa.pairs("rewrite")
    assert rewrite[0][0] == "Tell me what you know about Jeffrey Buck."
    assert "603-556-7631 is the phone number of Jeffrey Buck." in [a for _, a in rewrite]
    assert rewrite[-1] == only_qa[0]  # the gate's question is always trained
    assert len(qa.pairs("mixed")) == len(only_qa) + len(rewrite) - 1


def test_llm_generator_keeps_the_gate_question_and_valid_paraphrases() -> None:
    content = (
        "1. How do I call Jeffrey Buck?\n- Jeffrey Buck can be reached at 603-556-7631.\n"
        "Jeffrey Buck has a phone.\nWhat number is Jeffrey Buck's?"
    )

    def engine(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["temperature"] == 0
        return httpx.Response(200, json={"choices": [{"message": {"content": content}}]})

    client = httpx.Client(base_url="http://engine", transport=httpx.MockTransport(engine))
    generator = LLMGenerator("http://engine", "m", http=client)
    qa = generator.fact_data("f", "The phone number of Jeffrey Buck is 603-556-7631.", 3)
    assert qa.questions[0] == "What is the phone number of Jeffrey Buck?"
    assert qa.questions[1:] == ("How do I call Jeffrey Buck?", "What number is Jeffrey Buck's?")
    # a paraphrase without the value would teach something else: dropped
    assert qa.rewrites == ("Jeffrey Buck can be reached at 603-556-7631.",)


def test_the_llm_generator_asks_our_engine_with_the_engines_key() -> None:
    """`loramem run` gives every engine a key: a generator without it got 401 on every job."""
    own = make_generator(
        Settings(data_generator="llm", engine_url="http://engine:8100", engine_api_key="secret")
    )
    assert isinstance(own, LLMGenerator)
    assert str(own.http.base_url) == "http://engine:8100"
    assert own.http.headers["authorization"] == "Bearer secret"
    elsewhere = make_generator(
        Settings(
            data_generator="llm",
            engine_api_key="secret",
            generator_url="http://writer:9000/",
            generator_api_key="theirs",
            generator_model="writer-1",
        )
    )
    assert isinstance(elsewhere, LLMGenerator) and elsewhere.model == "writer-1"
    assert str(elsewhere.http.base_url) == "http://writer:9000"
    assert elsewhere.http.headers["authorization"] == "Bearer theirs"  # never our engine's key
    assert isinstance(make_generator(Settings()), TemplateGenerator)
