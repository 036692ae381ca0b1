"""The gateway as the experiments see it: ingest, follow jobs, ask. Every call goes through
loramem's one client (loramem/client.py); this adds what experiments need on top: refusals
as skipped arms, many jobs followed at once, scores from prompt log-probabilities."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from tqdm import tqdm

from loramem.client import FINISHED, Client, GatewayError

T = TypeVar("T")
R = TypeVar("R")
# How long the gateway may stay unreachable while jobs are followed: `loramem run` restarts
# a gateway that died (about 20 s to ready), and one lost poll must not end a run of hours.
UNREACHABLE_S = 300.0


class Unsupported(Exception):
    """The gateway refused a knob or endpoint this arm needs (not built there yet)."""


class JobFailed(Exception):
    pass


@dataclass(frozen=True)
class Answer:
    text: str
    module: str  # x-loramem-module: "<module>@v<N>" or "base"
    error: str | None = None  # the gateway's message when the request was refused
    outcome: str = ""  # x-loramem-outcome: "module", "pending" (read your writes), ...


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
        self._unreachable_since: float | None = None
        http = httpx.Client(
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency + 2),
            transport=transport,
        )
        # No retries: a refused or failed request is part of what an experiment measures.
        self.api = Client(
            self.gateway,
            api_key=api_key,
            tenant=tenant,
            timeout_s=timeout_s,
            max_retries=0,
            http=http,
        )

    # ------------------------------------------------------------------ ingest
    def post_facts(
        self, facts: Sequence[str], module: str | None, training: dict[str, Any] | None = None
    ) -> dict:
        return _accepted(lambda: self.api.add_facts(facts, module, training))

    def post_batches(
        self,
        facts: Sequence[str],
        size: int,
        training: dict[str, Any] | None = None,
        after_each: Callable[[dict[str, Any]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """POST `facts` in batches of `size`, in order, naming no module (the gateway packs
        them). Per batch: its index, how many facts, the job, the module the POST put them
        in (a delta, or a new module) and `posted_s` (since the first POST). `after_each`
        sees each batch before the next is posted (to wait for its job, or cancel it);
        otherwise follow them all with `wait_jobs`."""
        started = time.monotonic()
        batches: list[dict[str, Any]] = []
        for start in range(0, len(facts), size):
            chunk = list(facts[start : start + size])
            reply = self.post_facts(chunk, None, training)
            batches.append({
                "batch": len(batches),
                "facts": len(chunk),
                "job_id": reply["job_id"],
                "module": reply["module"],
                "posted_s": round(time.monotonic() - started, 3),
            })  # fmt: skip
            if after_each:
                after_each(batches[-1])
        return batches

    def post_document(
        self, text: str, module: str | None, training: dict[str, Any] | None = None
    ) -> dict:
        return _accepted(lambda: self.api.add_document(text, module, training))

    def put_fact(self, fact_id: str, text: str) -> dict:
        return _accepted(lambda: self.api.edit_fact(fact_id, text))

    def post_merge(self, modules: Sequence[str], combination: str) -> dict:
        try:
            return dict(self.api.merge(modules, combination))
        except GatewayError as exc:
            if exc.status in (404, 405):
                raise Unsupported("POST /merges is not offered by this gateway") from exc
            raise _refused(exc) from exc

    def wait_jobs(
        self,
        job_ids: Sequence[str],
        desc: str,
        timeout_s: float = 7200,
        on_finished: Callable[[dict], None] | None = None,
        between_polls: Callable[[], None] | None = None,
    ) -> list[dict]:
        """Poll until every job is published or failed; a bar counts finished jobs.
        `on_finished` sees each job at the first poll that finds it finished;
        `between_polls` runs after each round of polls while jobs are left (to ask what is
        ready while the rest trains)."""
        done: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        with tqdm(total=len(job_ids), desc=desc, unit="job") as bar:
            while len(done) < len(job_ids):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"jobs not finished in {timeout_s:.0f} s: {desc}")
                for job_id in job_ids:
                    if job_id in done:
                        continue
                    job = self._poll(lambda j=job_id: self.api.job(j))  # type: ignore[misc]
                    if job is None:
                        break
                    if job["status"] in FINISHED:
                        done[job_id] = job
                        bar.update(1)
                        if on_finished:
                            on_finished(job)
                    else:
                        progress = job.get("progress") or {}
                        bar.set_postfix(module=job["module"], step=progress.get("step", 0))
                if len(done) < len(job_ids) and between_polls:
                    between_polls()
                if len(done) < len(job_ids):
                    # about two polls a second in all: the jobs train one after another,
                    # and the key's rate limit is shared with the eval's questions
                    time.sleep(max(1.0, 0.5 * (len(job_ids) - len(done))))
        return [done[j] for j in job_ids]

    def wait_modules(self, settle_s: float = 120, timeout_s: float = 3600) -> list[dict]:
        """Wait until every module of the tenant serves a version (splits included), or
        until nothing has changed for settle_s: a module whose job failed never will."""
        deadline = time.monotonic() + timeout_s
        last: list[tuple[str, int | None]] = []
        changed = time.monotonic()
        while True:
            modules = self._poll(self.api.modules)
            if modules is None:
                time.sleep(2.0)
                continue
            state = [(m["name"], m["active_version"]) for m in modules]
            if state != last:
                last, changed = state, time.monotonic()
            if modules and all(m["active_version"] for m in modules):
                return modules
            if time.monotonic() - changed > settle_s or time.monotonic() > deadline:
                return modules
            time.sleep(2.0)

    def _poll(self, read: Callable[[], R]) -> R | None:
        """`read()`, or None while the gateway has been unreachable for less than
        UNREACHABLE_S in a row; past that, the connection error."""
        try:
            value = read()
        except httpx.TransportError:
            now = time.monotonic()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > UNREACHABLE_S:
                raise
            return None
        self._unreachable_since = None
        return value

    # --------------------------------------------------------------------- ask
    def chat(
        self,
        question: str,
        model: str,
        mode: str | None = "lora",
        system: str | None = None,
        max_tokens: int = 32,
        interim: str | None = None,
        **options: Any,
    ) -> Answer:
        """`mode` None: the gateway's default. `interim`: how a fact no published
        version holds is answered (rag, hybrid, off; None: the gateway's default).
        `options`: more of the request's `loramem` options (`span`, `span_question`,
        `context_threshold`)."""
        wanted = {**options, "interim": interim} if interim else options
        extra = {"loramem": wanted} if wanted else {}
        try:
            answer = self.api.ask(question, model, mode, system, max_tokens, **extra)
        except GatewayError as exc:
            return Answer("", "", exc.message)
        return Answer(answer.text, answer.module, outcome=answer.outcome)

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
        messages = _continued(question, f"{answer_prefix} {candidate}".strip(), system)
        try:
            answer = self.api.chat(
                messages, model, mode, max_tokens=1, prompt_logprobs=0, **CONTINUE
            )
        except GatewayError as exc:
            raise RuntimeError(f"scoring refused: {exc.message}") from exc
        return tail_logprob(answer.body.get("prompt_logprobs") or [], candidate)

    def continuation(self, question: str, answer_prefix: str, model: str, max_tokens: int) -> str:
        """The greedy continuation of an assistant turn that begins with `answer_prefix`:
        the same context continuation_logprob scores candidates in."""
        messages = _continued(question, answer_prefix, None)
        try:
            answer = self.api.chat(messages, model, "lora", max_tokens=max_tokens, **CONTINUE)
        except GatewayError as exc:
            raise RuntimeError(f"continuation refused: {exc.message}") from exc
        return answer.text

    def map(self, func: Callable[[T], R], items: Sequence[T], desc: str) -> list[R]:
        """Run requests concurrently (the engine batches them), in order, with a bar."""
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(tqdm(pool.map(func, items), total=len(items), desc=desc, unit="req"))

    def close(self) -> None:
        self.api.close()


# vLLM's chat extensions: continue the last assistant turn instead of starting a new one.
CONTINUE: dict[str, Any] = {"add_generation_prompt": False, "continue_final_message": True}


def _accepted(post: Callable[[], dict[str, Any]]) -> dict:
    try:
        return dict(post())
    except GatewayError as exc:
        raise _refused(exc) from exc


def _refused(exc: GatewayError) -> Exception:
    if exc.status == 400:
        # Our requests are well formed: a 400 is this configuration refused (a knob not
        # offered yet, or one the engines cannot serve), so the arm is skipped.
        return Unsupported(f"the gateway refused it: {exc.message}")
    return RuntimeError(f"ingest refused ({exc.status}): {exc.message}")


def _continued(question: str, assistant: str, system: str | None) -> list[dict[str, str]]:
    """The messages of a chat that continues the assistant turn `assistant`."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [
        {"role": "user", "content": question},
        {"role": "assistant", "content": assistant},
    ]


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
