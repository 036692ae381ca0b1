"""What a stub engine answers: an OpenAI chat completion of a given text, for tests that
put an httpx.MockTransport where the gateway's engine client would reach vLLM."""

from __future__ import annotations

import httpx


def chat_reply(model: str, text: str, completion_tokens: int = 4) -> httpx.Response:
    reply = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],  # fmt: skip
        "usage": {
            "prompt_tokens": 9,
            "completion_tokens": completion_tokens,
            "total_tokens": 9 + completion_tokens,
        },
    }
    return httpx.Response(200, json=reply)
