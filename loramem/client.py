"""The one Python client of the gateway: facts, documents, jobs, modules and merges over its
HTTP API, and chat through the `openai` package. The CLI and the evaluation use it.

    from loramem.client import Client

    memory = Client("http://127.0.0.1:8000")
    job = memory.add_facts(["The phone number of Jeffrey Buck is 603-556-7631."])
    memory.wait_job(job["job_id"])
    print(memory.ask("What is the phone number of Jeffrey Buck?").text)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai

from loramem.settings import Settings

FINISHED = ("published", "failed", "cancelled")  # a job in one of these never changes again
RETRIED_STATUSES = (429, 503)  # refused without a change: worth asking again
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is the caller's to wait for, not ours


class GatewayError(Exception):
    """The gateway refused a request: its HTTP status, and the message and type of the
    OpenAI-shaped error body (`type`: model_not_found, quota_exceeded, ...)."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.type = type_


@dataclass(frozen=True)
class Answer:
    text: str
    module: str  # x-loramem-module: "<module>@v<N>" or "base"
    mode: str  # x-loramem-mode: lora, rag or hybrid
    route_score: float | None  # x-loramem-route-score, when the router decided
    body: dict[str, Any]  # the whole completion, vLLM's extra fields (prompt_logprobs) too
    outcome: str = ""  # x-loramem-outcome: "module", "pending" (read your writes), ...


class Client:
    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        tenant: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        http: httpx.Client | None = None,
    ) -> None:
        """`api_key` is sent as `Authorization: Bearer` (a gateway with keys on takes the
        tenant from it); `tenant` as `x-loramem-tenant` (a gateway with keys off does).
        `http`: an httpx client to send through instead (FastAPI's TestClient in tests,
        connection limits for many threads); the headers are set on each request.
        `max_retries`: the openai package's retries of a chat on 429, 5xx and lost
        connections, and this client's of other calls on 429 and 503."""
        self.base_url = base_url.rstrip("/")
        self.headers = {"x-loramem-tenant": tenant} if tenant else {}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self.http = http or httpx.Client(timeout=timeout_s)
        self.max_retries = max_retries
        self.openai = openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=api_key or "none",  # required by the package; ignored with keys off
            default_headers=self.headers,
            timeout=timeout_s,
            max_retries=max_retries,
            # openai 3 annotates httpx2 clients but also takes (and checks for) httpx ones.
            http_client=self.http,  # type: ignore[arg-type]
        )

    @classmethod
    def from_settings(
        cls, settings: Settings, base_url: str | None = None, **options: Any
    ) -> Client:
        """The configured gateway with the configured key (`LORAMEM_API_KEY`)."""
        url = base_url or f"http://{settings.gateway_host}:{settings.gateway_port}"
        return cls(url, api_key=settings.api_key, **options)

    # ------------------------------------------------------------------ facts
    def add_facts(
        self,
        facts: Sequence[str | dict[str, str]],
        module: str | None = None,
        training: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Store facts (durable when this returns) → {"job_id", "fact_ids", "module"}."""
        body: dict[str, Any] = {"facts": list(facts)}
        return self._send("POST", "/facts", _with(body, module=module, training=training))

    def add_document(
        self, text: str, module: str | None = None, training: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """One fact per sentence → {"job_id", "fact_ids", "module"}."""
        body = _with({"text": text}, module=module, training=training)
        return self._send("POST", "/documents", body)

    def facts(self) -> list[dict[str, Any]]:
        return list(self._send("GET", "/facts"))

    def edit_fact(self, fact_id: str, text: str) -> dict[str, Any]:
        """Replace a fact's text; its module retrains → {"job_id", ...}."""
        return self._send("PUT", f"/facts/{fact_id}", {"text": text})

    def delete_fact(self, fact_id: str) -> dict[str, Any]:
        """Forget a fact; its module retrains without it → {"job_id", ...}."""
        return self._send("DELETE", f"/facts/{fact_id}")

    # ------------------------------------------------------------------- jobs
    def job(self, job_id: str) -> dict[str, Any]:
        return self._send("GET", f"/jobs/{job_id}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel an unfinished add or merge job (DELETE /jobs/{id}); its facts stay."""
        return self._send("DELETE", f"/jobs/{job_id}")

    def wait_job(
        self,
        job_id: str,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is published, failed or cancelled; `on_progress` sees every
        poll."""
        deadline = time.monotonic() + timeout_s
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s:.0f} s")
            time.sleep(poll_s)

    # ---------------------------------------------------------- modules, merges
    def modules(self) -> list[dict[str, Any]]:
        return list(self._send("GET", "/modules"))

    def merge(
        self,
        modules: Sequence[str],
        combination: str | None = None,
        weights: Sequence[float] | None = None,
    ) -> dict[str, Any]:
        """Queue a merged module of `modules` → {"job_id", "module"}."""
        body = _with(
            {"modules": list(modules)},
            combination=combination,
            weights=list(weights) if weights is not None else None,
        )
        return self._send("POST", "/merges", body)

    def merges(self) -> list[dict[str, Any]]:
        return list(self._send("GET", "/merges"))

    # ------------------------------------------------------------------- chat
    def ask(
        self,
        question: str,
        model: str = "auto",
        mode: str | None = None,
        system: str | None = None,
        max_tokens: int = 64,
        **extra: Any,
    ) -> Answer:
        """One chat turn through the openai package, with what the gateway says about it
        (module, mode, route score). `extra`: more body fields (vLLM's, loramem's)."""
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": question})
        return self.chat(messages, model=model, mode=mode, max_tokens=max_tokens, **extra)

    def chat(
        self,
        messages: list[dict[str, str]],
        model: str = "auto",
        mode: str | None = None,
        max_tokens: int = 64,
        temperature: float = 0.0,
        **extra: Any,
    ) -> Answer:
        if mode:
            extra["loramem"] = {**extra.get("loramem", {}), "mode": mode}
        try:
            raw = self.openai.chat.completions.with_raw_response.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=max_tokens,
                temperature=temperature,
                extra_body=extra or None,
            )
        except openai.APIStatusError as exc:
            raise _openai_error(exc) from exc
        completion = raw.parse()
        score = raw.headers.get("x-loramem-route-score")
        return Answer(
            text=completion.choices[0].message.content or "",
            module=raw.headers.get("x-loramem-module", ""),
            mode=raw.headers.get("x-loramem-mode", ""),
            route_score=float(score) if score else None,
            body=completion.model_dump(),
            outcome=raw.headers.get("x-loramem-outcome", ""),
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; a 429 (over the key's rate) or 503 (Redis away, queue full) is
        retried after its Retry-After, `max_retries` times, as the openai package does
        for chat: the gateway refuses such a request without changing anything."""
        for attempt in range(self.max_retries + 1):
            reply = self.http.request(method, self.base_url + path, json=body, headers=self.headers)
            if reply.is_success:
                return reply.json()
            if reply.status_code not in RETRIED_STATUSES or attempt == self.max_retries:
                break
            time.sleep(_retry_after_s(reply))
        raise _http_error(reply)


def _retry_after_s(reply: httpx.Response) -> float:
    try:
        return min(max(float(reply.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


def _with(body: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """`body` plus the optional fields that are set."""
    return {**body, **{k: v for k, v in optional.items() if v is not None}}


def _http_error(reply: httpx.Response) -> GatewayError:
    try:
        error = reply.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return GatewayError(
        reply.status_code, str(error.get("message") or reply.text[:200]), error.get("type")
    )


def _openai_error(exc: openai.APIStatusError) -> GatewayError:
    body = exc.body if isinstance(exc.body, dict) else {}
    # The openai package hands over the body's "error" object itself when there is one.
    error = body.get("error", body) if isinstance(body.get("error"), dict) else body
    return GatewayError(
        exc.status_code, str(error.get("message") or exc.message), error.get("type")
    )
