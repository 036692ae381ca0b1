"""What a user would write instead of vLLM: transformers + PEFT behind a small HTTP server.

    .venv/bin/python -m bench.peft_server --model DIR --adapter name=DIR [--adapter ...]

One OpenAI-style endpoint, `POST /v1/chat/completions` (non-streaming). Concurrent
requests are batched: the generation thread takes whatever has queued (up to
`--max-batch`), left-pads the prompts and runs one `generate` over them, each row with
its own adapter through PEFT's `adapter_names` (the base model's rows use "__base__").
Rows stop at their own `max_tokens`; a batch runs until its longest row is done, so this
is static batching, the simple thing, not vLLM's continuous batching.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI fields this server ignores

    model: str
    messages: list[dict[str, str]]
    max_tokens: int = 32
    ignore_eos: bool = False


@dataclass
class Pending:
    prompt_ids: list[int]
    adapter: str
    max_tokens: int
    ignore_eos: bool
    done: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] = field(default_factory=list)


class BatchingGenerator:
    """One thread owns the model; requests wait in a queue and are served in batches."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int) -> None:
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.queue: queue.Queue[Pending] = queue.Queue()
        self.pad_id = tokenizer.pad_token_id or tokenizer.eos_token_id
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            self._generate(batch)

    @torch.inference_mode()
    def _generate(self, batch: list[Pending]) -> None:
        width = max(len(p.prompt_ids) for p in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):  # left padding: every row ends where generation starts
            ids[row, width - len(p.prompt_ids) :] = torch.tensor(p.prompt_ids)
            mask[row, width - len(p.prompt_ids) :] = 1
        longest = max(p.max_tokens for p in batch)
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=longest,
            min_new_tokens=longest if all(p.ignore_eos for p in batch) else 0,
            do_sample=False,
            pad_token_id=self.pad_id,
            adapter_names=[p.adapter for p in batch],
        )
        eos = self.tokenizer.eos_token_id
        for row, p in enumerate(batch):
            new = out[row, width:].tolist()[: p.max_tokens]
            if not p.ignore_eos and eos in new:
                new = new[: new.index(eos) + 1]
            p.output_ids = new
            p.done.set()


def build_app(generator: BatchingGenerator, adapters: set[str], base_name: str) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: ChatRequest) -> dict[str, Any]:
        adapter = BASE if request.model == base_name else request.model
        if adapter != BASE and adapter not in adapters:
            return {"error": {"message": f"unknown model {request.model}", "type": "invalid"}}
        prompt_ids = generator.tokenizer.apply_chat_template(
            request.messages, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        pending = Pending(list(prompt_ids), adapter, request.max_tokens, request.ignore_eos)
        generator.queue.put(pending)
        await asyncio.to_thread(pending.done.wait)
        text = generator.tokenizer.decode(pending.output_ids, skip_special_tokens=True)
        return {
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "completion_tokens": len(pending.output_ids),
            },
        }

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def load(model_dir: str, adapters: dict[str, str], threads: int | None) -> tuple[Any, Any]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for i, (name, path) in enumerate(adapters.items()):
        if i == 0:
            model = PeftModel.from_pretrained(model, path, adapter_name=name)
        else:
            model.load_adapter(path, adapter_name=name)
    return model.eval(), tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="base model folder")
    parser.add_argument("--base-name", default="SmolLM2-135M-Instruct")
    parser.add_argument("--adapter", action="append", default=[], help="name=folder")
    parser.add_argument("--port", type=int, default=19800)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    adapters = dict(item.split("=", 1) for item in args.adapter)
    if not adapters:
        parser.error("give at least one --adapter (PEFT's mixed batches need a PeftModel)")
    model, tokenizer = load(args.model, adapters, args.threads)
    app = build_app(
        BatchingGenerator(model, tokenizer, args.max_batch), set(adapters), args.base_name
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
