"""LLM judge of free-form answers: the paper's 0-10 rubric, JSON out, temperature 0."""

from __future__ import annotations

from typing import Any

import httpx

from evaluation.metrics import JudgeVerdict, parse_judge
from loramem.settings import Settings

RUBRIC = (
    "You grade an answer against a reference answer. Score it from 0 to 10 on three "
    "criteria taken together: factual alignment with the reference (most weight), "
    "completeness (it covers the reference's key points) and relevance (it answers the "
    "question, without unrelated content). 0 = wrong or unrelated, 5 = partly correct, "
    "10 = fully correct and complete. Reply with JSON only: "
    '{"score": <integer 0-10>, "explanation": "<one sentence>"}'
)


# Structured output (vLLM's and OpenAI's `response_format`): even the 135M base model then
# replies with valid rubric JSON; without it, it never did (10 of 10 parse failures).
VERDICT_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "verdict",
        "schema": {
            "type": "object",
            "properties": {
                "score": {"type": "integer", "minimum": 0, "maximum": 10},
                "explanation": {"type": "string", "maxLength": 160},
            },
            "required": ["score", "explanation"],
        },
    },
}


class Judge:
    def __init__(self, url: str, model: str, own_engine: bool) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.own_engine = own_engine
        self.http = httpx.Client(base_url=self.url, timeout=300)

    @classmethod
    def from_settings(cls, settings: Settings, gateway: str) -> Judge:
        url = settings.judge_url or gateway
        model = settings.judge_model or settings.base_name
        return cls(url, model, own_engine=settings.judge_url is None)

    def score(self, question: str, reference: str, answer: str) -> JudgeVerdict | None:
        """The verdict, or None when the judge's reply is not valid rubric JSON."""
        body = {
            "model": self.model,
            "temperature": 0,
            # Room for the longest explanation the schema allows even at a token per
            # character: a reply cut short is invalid JSON.
            "max_tokens": 256,
            "response_format": VERDICT_FORMAT,
            "messages": [
                {"role": "system", "content": RUBRIC},
                {
                    "role": "user",
                    "content": f"Question: {question}\nReference answer: {reference}\n"
                    f"Answer to grade: {answer}",
                },
            ],
        }
        reply = self.http.post("/v1/chat/completions", json=body)
        if reply.status_code != 200:
            return None
        return parse_judge(str(reply.json()["choices"][0]["message"]["content"]))

    @property
    def caveat(self) -> str:
        if self.own_engine:
            return (
                f"Judge: {self.model} through {self.url}, i.e. the 135M base model under test. "
                "It is a weak judge: its scores are noisy and not comparable with the paper's "
                "(a large judge model). Set LORAMEM_JUDGE_URL / LORAMEM_JUDGE_MODEL to use a "
                "stronger OpenAI-compatible judge."
            )
        return f"Judge: {self.model} at {self.url}."

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "own_engine": self.own_engine,
                "caveat": self.caveat}  # fmt: skip
