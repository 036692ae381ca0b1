from trainer.synth import fact_qa, split_prefix


def test_attribute_sentence_becomes_questions_about_the_attribute() -> None:
    qa = fact_qa("f1", "The phone number of Jeffrey Buck is 603-556-7631.", 3)
    assert qa.questions[0] == "What is the phone number of Jeffrey Buck?"
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
