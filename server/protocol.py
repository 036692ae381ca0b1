"""Wire models of the gateway's HTTP API, kept apart from the code that serves them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from loramem.knobs import PartialTrainingKnobs

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
MODULE_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"


class FactIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    id: str | None = Field(default=None, pattern=ID_PATTERN)


class PostFactsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    facts: list[StrictStr | FactIn]
    module: str | None = Field(default=None, pattern=MODULE_PATTERN)
    training: PartialTrainingKnobs | None = None

    def normalized(self) -> list[FactIn]:
        return [f if isinstance(f, FactIn) else FactIn(text=f) for f in self.facts]


class PostDocumentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    module: str | None = Field(default=None, pattern=MODULE_PATTERN)
    training: PartialTrainingKnobs | None = None


class PostFactsResponse(BaseModel):
    job_id: str
    fact_ids: list[str]
    module: str


class JobOut(BaseModel):
    id: str
    kind: str  # add, edit, delete or merge: only add and merge jobs can be cancelled
    status: str
    module: str
    version: int | None
    progress: dict[str, Any]
    error: str | None


class FactOut(BaseModel):
    id: str
    text: str
    module: str


class ModuleOut(BaseModel):
    name: str
    active_version: int | None
    served_name: str | None
    fact_count: int
    recall: float | None = None  # the active version's recall on its own facts, at publish


class HitSeriesOut(BaseModel):
    module: str  # a module of the caller's tenant, or "base"
    counts: list[int]  # requests per bucket, oldest first; the last is the current bucket
    total: int


class HitsOut(BaseModel):
    """This gateway's completion requests of the caller's tenant, by the module that
    served them (server/hits.py)."""

    window_s: int
    bucket_s: int
    now_s: float
    total: int
    series: list[HitSeriesOut]


class RouteCandidateOut(BaseModel):
    module: str
    score: float  # aggregated: best fact plus support (router/policy.py)
    best: float  # the module's best fact, compared with the threshold


class MatchedFactOut(BaseModel):
    id: str
    module: str
    score: float  # cosine of the query and the fact
    text: str | None  # None while Redis is away


class SpanPartOut(BaseModel):
    """One module's share of a question that spans modules (router/span.py)."""

    module: str
    served: str  # `<module>@v<N>`
    fact_id: str  # the part's best fact among the query's top facts
    score: float
    words: list[str]  # the query's words this part's fact named


class RouteExplanation(BaseModel):
    """Why this module answered; sent as the response's `loramem` field (on the first
    chunk of a stream) when the request asks for it with `"loramem": {"explain": true}`."""

    served: str  # `<module>@v<N>` or "base"
    module: str | None
    version: int | None
    outcome: str  # module, merged, span, pending, base, below_threshold, unnamed_subject
    mode: str
    score: float | None  # the best fact's score, when the router decided
    threshold: float
    candidates: list[RouteCandidateOut]
    facts: list[MatchedFactOut]  # the top facts of the caller's tenant, best first
    # A question spanning modules: its parts, the chosen module's first (else empty).
    span: list[SpanPartOut] = []


class LoramemOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # How the answer is made (router/answer.py; default: LORAMEM_ANSWER_MODE).
    mode: Literal["lora", "rag", "hybrid"] | None = None
    # model=auto: a query whose top modules are close goes to their merged module.
    merge: bool = False
    # model=auto: how a fact no published version holds yet is answered (default:
    # LORAMEM_INTERIM_MODE); "off" answers as if it had not been posted.
    interim: Literal["rag", "hybrid", "off"] | None = None
    # rag and hybrid: the score a fact needs to join the context (default:
    # LORAMEM_ROUTER_CONTEXT_THRESHOLD). Lower for documents, whose questions are phrased
    # unlike their sentences; routing is unchanged.
    context_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # Add the routing decision to the response (`loramem`, RouteExplanation): the console.
    explain: bool = False
    # model=auto, lora or hybrid: how a question spanning modules is answered (server/span.py;
    # default: LORAMEM_ROUTER_SPAN). "off" answers from the chosen module alone.
    span: Literal["compose", "compose-hybrid", "context", "off"] | None = None
    # What each composed part's module is asked (router/span.py; default:
    # LORAMEM_ROUTER_SPAN_QUESTION): its fact's trained question, or the user's wording.
    span_question: Literal["trained", "wording"] | None = None


ModuleName = Annotated[str, Field(pattern=MODULE_PATTERN)]


class PostMergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    modules: list[ModuleName] = Field(min_length=2, max_length=8)
    combination: Literal["ties", "linear", "cat"] | None = None  # default: LORAMEM_ setting
    weights: list[Annotated[float, Field(allow_inf_nan=False)]] | None = None  # default: 1.0


class PostMergeResponse(BaseModel):
    job_id: str
    module: str


class MergeOut(BaseModel):
    name: str
    sources: list[str]
    combination: str
    weights: list[float]
    active_version: int | None
    served_name: str | None
    built_from: dict[str, int]  # source versions of the active version
    current: bool  # built from the sources' active versions (else stale)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Any = None


class CompletionRequestBase(BaseModel):
    """Only the fields the gateway reads; everything else passes through to the engine."""

    model_config = ConfigDict(extra="allow")
    model: str
    stream: bool = False
    loramem: LoramemOptions = Field(default_factory=LoramemOptions)


class ChatCompletionRequest(CompletionRequestBase):
    messages: list[ChatMessage] = Field(min_length=1)

    def query_text(self) -> str:
        """The last user turn: what the router matches against facts."""
        for message in reversed(self.messages):
            if message.role == "user":
                return _text(message.content)
        return ""


class CompletionRequest(CompletionRequestBase):
    prompt: str | list[str]

    def query_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else " ".join(self.prompt[-1:])


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class PutFactRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr


class PostKeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenant: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    role: Literal["reader", "writer", "admin"]
    name: str = Field(default="", max_length=100)


class KeyOut(BaseModel):
    """A key's record: never the key, never its hash."""

    id: str
    tenant: str
    role: str
    name: str
    created_at_s: float
    last_used_s: float | None
    revoked: bool
    revoked_at_s: float | None


class PostKeyResponse(KeyOut):
    key: str  # shown here once; Redis keeps only its sha256
