"""An upstream that answers at once, in the engine's OpenAI shape: with it,
bench/gateway_overhead.py measures what the gateway itself adds, without a model server
on the cores (and without the engine lock). Not a stand-in for the engine anywhere else.

    .venv/bin/python -m bench.null_engine --port 19410
"""

from __future__ import annotations

import argparse
import time

import uvicorn
from fastapi import FastAPI, Request


def app() -> FastAPI:
    api = FastAPI()

    @api.get("/health")
    def health() -> dict:
        return {}

    @api.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": []}  # no adapter loaded: the publisher's floor

    @api.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        tokens = int(body.get("max_tokens") or 1)
        return {
            "id": "null",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x" * tokens},
                    "finish_reason": "length",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
        }

    return api


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)
