"""Training data from facts, in the paper's formats: QA pairs, declarative rewrites, or both.

Two generators share one interface (`Generator.fact_data`):
- `template` (default, no LLM): it recognises "The <attribute> of <subject> is <value>."
  and asks for the attribute in several phrasings; any other sentence is split before its
  final value, and the opening becomes the prompt ("Lenta.ru is written in" -> "Italian"),
  which is how CounterFact edits are asked.
- `llm`: any OpenAI-compatible endpoint (our own engine included) writes the questions and
  paraphrases; the template's split still supplies the value that recall checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import httpx

from loramem.engine import engine_headers
from loramem.fact_forms import fact_form
from loramem.settings import Settings

_ATTRIBUTE_REWRITES: tuple[str, ...] = (
    "{subj}'s {attr} is {value}.",
    "{value} is the {attr} of {subj}.",
)
REWRITE_PROMPT = "Tell me what you know about {topic}."

FORMATS = ("qa", "rewrite", "mixed")
_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*")  # "1. ", "- " before a generated line


@dataclass(frozen=True)
class FactQA:
    """Ways to ask for one fact, the answers to train, and the value recall checks.

    `questions[0]` is the question the validation gate asks.
    """

    fact_id: str
    questions: tuple[str, ...]
    answer: str
    expected: str
    topic: str  # what the fact is about: the subject, or the sentence's opening
    rewrites: tuple[str, ...] = ()

    def pairs(self, data_format: str) -> list[tuple[str, str]]:
        """(prompt, answer) training pairs in the chosen format."""
        qa = [(q, self.answer) for q in self.questions]
        about = REWRITE_PROMPT.format(topic=self.topic)
        rewrite = [(about, r) for r in (self.answer, *self.rewrites)]
        if data_format == "qa":
            return qa
        if data_format == "rewrite":
            # The gate asks questions[0]; without it, recall measures transfer, not storage.
            return rewrite + qa[:1]
        return qa + rewrite


class Generator(Protocol):
    def fact_data(self, fact_id: str, text: str, questions_per_fact: int) -> FactQA: ...


class TemplateGenerator:
    def fact_data(self, fact_id: str, text: str, questions_per_fact: int) -> FactQA:
        return fact_qa(fact_id, text, questions_per_fact)


def fact_qa(fact_id: str, text: str, questions_per_fact: int) -> FactQA:
    form = fact_form(text)  # the shapes and questions live in loramem/fact_forms.py
    answer = form.sentence if form.sentence.endswith((".", "!", "?")) else form.sentence + "."
    rewrites: tuple[str, ...] = ()
    if form.attr is not None:
        rewrites = tuple(r.format(value=form.value, **form.fields) for r in _ATTRIBUTE_REWRITES)
    questions = form.questions(questions_per_fact)
    return FactQA(fact_id, questions, answer, form.value, form.topic, rewrites)


class LLMGenerator:
    """Questions and paraphrases written by a chat model behind an OpenAI-compatible API."""

    INSTRUCTION = (
        "Fact: {fact}\n"
        "Write {count} different questions that this fact answers, then {count} paraphrases "
        "of the fact. One per line; questions end with '?'. No numbering."
    )

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        self.http = http or httpx.Client(
            base_url=base_url.rstrip("/"), headers=engine_headers(api_key), timeout=60.0
        )
        self.model = model

    def fact_data(self, fact_id: str, text: str, questions_per_fact: int) -> FactQA:
        template = fact_qa(fact_id, text, questions_per_fact)
        reply = self.http.post(
            "/v1/chat/completions",
            json={
                "model": self.model,
                "temperature": 0,
                "max_tokens": 256,
                "messages": [
                    {"role": "user", "content": self.INSTRUCTION.format(fact=text, count=3)}
                ],
            },
        )
        reply.raise_for_status()
        content = reply.json()["choices"][0]["message"]["content"]
        lines = [_LIST_MARK.sub("", ln).strip() for ln in content.splitlines()]
        lines = [ln for ln in lines if ln]
        # Keep the template's first question (the gate asks it) and add the model's own;
        # a paraphrase must still carry the value, or it would teach something else.
        asked = [ln for ln in lines if ln.endswith("?")][:questions_per_fact]
        said = [ln for ln in lines if not ln.endswith("?") and template.expected in ln][:3]
        questions = tuple(dict.fromkeys((template.questions[0], *asked)))
        rewrites = tuple(said) or template.rewrites
        return FactQA(
            fact_id, questions, template.answer, template.expected, template.topic, rewrites
        )


def make_generator(settings: Settings) -> Generator:
    """The settings' generator. Unset, the generator's endpoint is our own engine, asked
    with the engines' key (every engine of `loramem run` requires it); another endpoint
    gets generator_api_key."""
    if settings.data_generator != "llm":
        return TemplateGenerator()
    if settings.generator_url is None:
        url, key = settings.engine_url, settings.engine_api_key
    else:
        url, key = settings.generator_url, settings.generator_api_key
    return LLMGenerator(url, settings.generator_model or settings.base_name, key)
