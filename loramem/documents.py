"""Free-text documents become facts: one sentence each, so that each can be asked for,
edited and deleted on its own (a PaperQA introduction becomes a few dozen facts)."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def split_document(text: str, max_chars: int, min_chars: int = 20) -> list[str]:
    """Sentences, with very short ones merged into the next and long ones cut at commas."""
    chunks: list[str] = []
    pending = ""
    for sentence in _SENTENCE_END.split(" ".join(text.split())):
        sentence = f"{pending} {sentence}".strip() if pending else sentence
        if len(sentence) < min_chars:
            pending = sentence
            continue
        pending = ""
        chunks.extend(_cut(sentence, max_chars))
    if pending:
        chunks.append(pending)
    return [c for c in chunks if c.strip()]


def _cut(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces, current = [], ""
    for part in re.split(r"(?<=[,;:])\s+", sentence):
        while len(part) > max_chars:  # no punctuation to cut at: cut hard
            pieces.append(part[:max_chars])
            part = part[max_chars:]
        if current and len(current) + 1 + len(part) > max_chars:
            pieces.append(current)
            current = part
        else:
            current = f"{current} {part}".strip()
    if current:
        pieces.append(current)
    return pieces
