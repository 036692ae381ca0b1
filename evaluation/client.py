"""The gateway as the experiments see it: ingest, follow jobs, ask. Nothing else is used."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


class Unsupported(Exception):
    """The gateway refused a knob or endpoint this arm needs (not built there yet)."""


class JobFailed(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    text: str
    module: str  # x-loramem-module: "<module>@v<N>" or "base"
    error: str | None = None  # the gateway's message when the request was refused


class EvalClient:
    def __init__(
        self,
        gateway: str,
        tenant: str,
        concurrency: int = 8,
        timeout_s: float = 600.0,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """`api_key` (the setting `LORAMEM_API_KEY`, as `loramem add` sends it) is sent as
        `Authorization: Bearer`; a gateway that requires keys takes the tenant from the key
        and ignores the tenant header. `transport` is for tests."""
        self.gateway = gateway.rstrip("/")
        self.tenant = tenant
        self.concurrency = concurrency
        headers = {"x-loramem-tenant": tenant}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(
            base_url=self.gateway,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency + 2),
            transport=transport,
        )

    # ------------------------------------------------------------------ ingest
    def post_facts(
        self, facts: Sequence[str], module: str | None, training: dict[str, Any] | None = None
    ) -> dict:
        body: dict[str, Any] = {"facts": list(facts)}
        if module:
            body["module"] = module
        if training:
            body["training"] = training
        return self._accepted(self.http.post("/facts", json=body))

    def post_document(
        self, text: str, module: str | None, training: dict[str, Any] | None = None
    ) -> dict:
        body: dict[str, Any] = {"text": text, **({"module": module} if module else {})}
        if training:
            body["training"] = training
        return self._accepted(self.http.post("/documents", json=body))

    def post_merge(self, modules: Sequence[str], combination: str) -> dict:
        reply = self.http.post(
            "/merges", json={"modules": list(modules), "combination": combination}
        )
        if reply.status_code in (404, 405):
            raise Unsupported("POST /merges is not offered by this gateway")
        return self._accepted(reply)

    @staticmethod
    def _accepted(reply: httpx.Response) -> dict:
        if reply.status_code == 202:
            return dict(reply.json())
        error = _error(reply)
        if reply.status_code == 400:
            # Our requests are well formed: a 400 is this configuration refused (a knob not
            # offered yet, or one the engines cannot serve), so the arm is skipped.
            raise Unsupported(f"the gateway refused it: {error.get('message')}")
        raise RuntimeError(f"ingest refused ({reply.status_code}): {error.get('message')}")

    def wait_jobs(self, job_ids: Sequence[str], desc: str, timeout_s: float = 7200) -> list[dict]:
        """Poll until every job is published or failed; a bar counts finished jobs."""
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        with tqdm(total=len(job_ids), desc=desc, unit="job") as bar:
            while len(done) < len(job_ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs not finished in {timeout_s:.0f} s: {desc}")
                for job_id in job_ids:
                    if job_id in done:
                        continue
                    job = self.http.get(f"/jobs/{job_id}").json()
                    if job["status"] in ("published", "failed", "cancelled"):
                        done[job_id] = job
                        bar.update(1)
                    else:
                        progress = job.get("progress") or {}
                        bar.set_postfix(module=job["module"], step=progress.get("step", 0))
                if len(done) < len(job_ids):
                    time.sleep(1.0)
        return [done[j] for j in job_ids]

    def wait_modules(self, settle_s: float = 120, timeout_s: float = 3600) -> list[dict]:
        """Wait until every module of the tenant serves a version (splits included), or
        until nothing has changed for settle_s: a module whose job failed never will."""
        deadline = time.monotonic() + timeout_s
        last: list[tuple[str, int | None]] = []
        changed = time.monotonic()
        while True:
            modules = list(self.http.get("/modules").json())
            state = [(m["name"], m["active_version"]) for m in modules]
            if state != last:
                last, changed = state, time.monotonic()
            if modules and all(m["active_version"] for m in modules):
                return modules
            if time.monotonic() - changed > settle_s or time.monotonic() > deadline:
                return modules
            time.sleep(2.0)

    # --------------------------------------------------------------------- ask
    def chat(
        self,
        question: str,
        model: str,
        mode: str = "lora",
        system: str | None = None,
        max_tokens: int = 32,
    ) -> Answer:
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        body = {
            "model": model,
            "messages": messages,
            "temperature": 0,
            "max_tokens": max_tokens,
            "loramem": {"mode": mode},
        }
        reply = self.http.post("/v1/chat/completions", json=body)
        module = reply.headers.get("x-loramem-module", "")
        if reply.status_code != 200:
            return Answer("", module, str(_error(reply).get("message")))
        return Answer(str(reply.json()["choices"][0]["message"]["content"]), module)

    def continuation_logprob(
        self,
        question: str,
        answer_prefix: str,
        candidate: str,
        model: str,
        mode: str = "lora",
        system: str | None = None,
    ) -> float | None:
        """log P(candidate | chat prompt, assistant turn so far = answer_prefix), read from
        vLLM's prompt_logprobs with the assistant turn continued (no generation prompt).

        None when the tail tokens do not spell the candidate (a token spans the boundary)."""
        body = _continued(question, f"{answer_prefix} {candidate}".strip(), model, mode, system)
        reply = self.http.post("/v1/chat/completions", json={**body, "prompt_logprobs": 0})
        if reply.status_code != 200:
            raise RuntimeError(f"scoring refused: {_error(reply).get('message')}")
        return tail_logprob(reply.json().get("prompt_logprobs") or [], candidate)

    def continuation(self, question: str, answer_prefix: str, model: str, max_tokens: int) -> str:
        """The greedy continuation of an assistant turn that begins with `answer_prefix`:
        the same context continuation_logprob scores candidates in."""
        body = _continued(question, answer_prefix, model, "lora", None)
        reply = self.http.post("/v1/chat/completions", json={**body, "max_tokens": max_tokens})
        if reply.status_code != 200:
            raise RuntimeError(f"continuation refused: {_error(reply).get('message')}")
        return str(reply.json()["choices"][0]["message"]["content"])

    def map(self, func: Callable[[T], R], items: Sequence[T], desc: str) -> list[R]:
        """Run requests concurrently (the engine batches them), in order, with a bar."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(tqdm(pool.map(func, items), total=len(items), desc=desc, unit="req"))

    def close(self) -> None:
        self.http.close()


def _continued(
    question: str, assistant: str, model: str, mode: str, system: str | None
) -> dict[str, Any]:
    """A chat request that continues the assistant turn `assistant` (no generation prompt)."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": assistant},
    ]
    return {
        "model": model,
        "messages": messages,
        "max_tokens": 1,
        "temperature": 0,
        "add_generation_prompt": False,
        "continue_final_message": True,
        "loramem": {"mode": mode},
    }


def tail_logprob(entries: Sequence[dict | None], candidate: str) -> float | None:
    """Sum the log-probabilities of the last prompt tokens that spell `candidate`."""
    total, text = 0.0, ""
    want = candidate.strip()
    for entry in reversed(entries):
        if not entry:
            return None
        # prompt_logprobs=0: the one entry is the prompt's own token.
        (logprob,) = entry.values()
        total += float(logprob["logprob"])
        text = str(logprob.get("decoded_token") or "") + text
        if len(text.strip()) >= len(want):
            return total if text.strip() == want else None
    return None


def _error(reply: httpx.Response) -> dict:
    try:
        body = reply.json()
    except ValueError:
        return {"message": reply.text[:200]}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {"message": str(body)[:200]}
