"""The Redis key schema. No other module spells a key name.

Layout (all under the prefix `loramem:`). A module `{name}` here is its id
`<tenant>~<name>` (loramem/names.py), unique across tenants:
  fact:{tenant}:{id}            hash   text, module, embedding (float32 bytes), created_at_s
  tenant:{tenant}:facts         set    fact ids
  tenant:{tenant}:modules       set    module names
  tenant:{tenant}:open_module   string the module that new facts are packed into
  module:{name}                 hash   tenant, active_version, version_seq, created_at_s;
                                       a merged module adds sources, combination, weights
  module:{name}:facts           set    fact ids
  version:{name}:{n}            hash   metadata of one immutable module version
  version:{name}:{n}:files      hash   adapter file name -> bytes
  versions:retired              zset   "<module>@v<N>" -> when it stopped being active (s);
                                       the trainer sweeps its record and files after retention
  tenant:{tenant}:merges        set    merged module names
  merge:{name}:{sources}        string job id of the build of `name` from these source versions
  job:{id}                      hash   status, module, tenant, progress (json), error, ...;
                                       expires job_retention_s after it is published/failed
  lock:module:{name}            string worker token; one trainer per module at a time
  stream:jobs:{tenant}          stream the tenant's job ids for the trainer consumer group; an
                                       entry is deleted when it is acknowledged
  jobs:ready                    zset   tenants that may have undelivered jobs -> when (Redis
                                       clock, us) they joined or were last served; a worker
                                       pops the lowest (round-robin over tenants)
  jobs:streams                  set    tenants that have a job stream (reclaim and backlog scans)
  stream:events                 stream registry events (published, retired, facts_changed)
                                       for routers
  apikey:{id}                   hash   hash (sha256 of the key), tenant, role, name,
                                       created_at_s, last_used_s, revoked_at_s
  apikeys                       set    every API key id, revoked ones included
  tenant:{tenant}:open_jobs     set    ids of the tenant's non-terminal jobs (quota)
  tenant:{tenant}:adapter_bytes string bytes of the tenant's stored version blobs (quota)
  rate:{kind}:{subject}:{n}     string requests or tokens of one rate window n; expires
"""

PREFIX = "loramem:"

EVENTS_STREAM = PREFIX + "stream:events"
TRAINER_GROUP = "trainers"  # the consumer group of every tenant's job stream

# Fair service: each tenant's jobs wait in a stream of their own, and workers take turns
# over the tenants that have work (loramem/queue.py), so one tenant's burst cannot queue
# ahead of another tenant's single job. Per-tenant keys are also what Redis Cluster needs.
JOBS_READY = PREFIX + "jobs:ready"
JOB_STREAMS = PREFIX + "jobs:streams"

# Bounded so that the events stream cannot grow without limit; routers that fall further
# behind than this rebuild their index from the registry (server/reconcile.py EventFollower).
EVENTS_STREAM_MAXLEN = 100_000

# A requested merge build is not queued again for this long; after it a failed build
# may be retried by the next request that wants it.
MERGE_REQUEST_TTL_S = 3600


def fact(tenant: str, fact_id: str) -> str:
    return f"{PREFIX}fact:{tenant}:{fact_id}"


def tenant_facts(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:facts"


def tenant_modules(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:modules"


def tenant_open_module(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:open_module"


def tenants() -> str:
    return f"{PREFIX}tenants"


def tenant_merges(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:merges"


def merge_request(name: str, sources: str) -> str:
    """`sources` names the exact source versions, e.g. "a@v2,b@v1"."""
    return f"{PREFIX}merge:{name}:{sources}"


def module(name: str) -> str:
    return f"{PREFIX}module:{name}"


def module_facts(name: str) -> str:
    return f"{PREFIX}module:{name}:facts"


def version(name: str, number: int) -> str:
    return f"{PREFIX}version:{name}:{number}"


def version_files(name: str, number: int) -> str:
    return f"{PREFIX}version:{name}:{number}:files"


def retired_versions() -> str:
    return f"{PREFIX}versions:retired"


def job(job_id: str) -> str:
    return f"{PREFIX}job:{job_id}"


def job_stream(tenant: str) -> str:
    return f"{PREFIX}stream:jobs:{tenant}"


def module_lock(name: str) -> str:
    return f"{PREFIX}lock:module:{name}"


def api_key(key_id: str) -> str:
    return f"{PREFIX}apikey:{key_id}"


def api_keys() -> str:
    return f"{PREFIX}apikeys"


def tenant_open_jobs(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:open_jobs"


def tenant_adapter_bytes(tenant: str) -> str:
    return f"{PREFIX}tenant:{tenant}:adapter_bytes"


def rate_window(kind: str, subject: str, window: int) -> str:
    """`kind` "requests" or "tokens"; `subject` a key id, or "tenant=<name>" with auth off."""
    return f"{PREFIX}rate:{kind}:{subject}:{window}"
