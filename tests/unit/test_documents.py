from loramem.documents import split_document


def test_a_document_becomes_one_fact_per_sentence() -> None:
    text = "Diffusion models plan trajectories. They use offline data!  Is it fast? Yes. It is."
    assert split_document(text, max_chars=200) == [
        "Diffusion models plan trajectories.",
        "They use offline data!",
        "Is it fast? Yes. It is.",  # fragments shorter than a fact merge forward
    ]


def test_long_sentences_are_cut_within_the_limit() -> None:
    sentence = "First clause here, second clause there, third clause everywhere, " * 5
    chunks = split_document(sentence.strip(), max_chars=60)
    assert all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks).replace("  ", " ") == " ".join(sentence.split())
