"""The Redis key schema. No other module spells a key name.

Layout (all under the prefix `loramem:`). A module `{name}` here is its id
`<tenant>~<name>` (loramem/names.py), unique across tenants. Every key but the API keys'
and the rate windows' carries its tenant's bucket as a Redis Cluster hash tag,
`{b:<bucket>}` (two hex digits, `bucket`): all of a tenant's keys, and the few
structures shared across tenants, are kept per bucket, so that every transaction and
script touches one hash slot and runs unchanged on a single Redis or a Redis Cluster.
Shown without the prefix and the tag:
  fact:{tenant}:{id}            hash   text, module, embedding (float32 bytes), created_at_s
  tenant:{tenant}:facts         set    fact ids
  tenant:{tenant}:modules       set    module names
  tenant:{tenant}:open_module   string the module that new facts are packed into
  module:{name}                 hash   tenant, active_version, version_seq, created_at_s;
                                       a merged module adds sources, combination, weights;
                                       a delta adds parent, its consolidation consolidate_job
  module:{name}:facts           set    fact ids
  module:{name}:deltas          set    the module's delta modules not yet consolidated
  deltas                        zset   per bucket: delta module -> when it was made (s)
  version:{name}:{n}            hash   metadata of one immutable module version
  version:{name}:{n}:files      hash   adapter file name -> bytes
  versions:retired              zset   per bucket: "<module>@v<N>" -> when it stopped being
                                       active (s); the trainer sweeps record and files
  tenant:{tenant}:merges        set    merged module names
  merge:{name}:{sources}        string job id of the build of `name` from these source versions
  job:{id}                      hash   status, module, tenant, progress (json), error, ...;
                                       expires job_retention_s after it is published/failed.
                                       A job id starts with its tenant's bucket (names.py)
  lock:module:{name}            string worker token; one trainer per module at a time
  stream:jobs:{tenant}          stream the tenant's job ids for the trainer consumer group; an
                                       entry is deleted when it is acknowledged
  jobs:ready                    zset   per bucket: tenants that may have undelivered jobs ->
                                       when (Redis clock, us) they joined or were last
                                       served; a worker pops the lowest over all buckets
  jobs:streams                  set    per bucket: tenants that have a job stream (reclaim
                                       and backlog scans)
  tenants                       set    per bucket: tenants that ever stored a fact
  stream:events                 stream per bucket: registry events (published, retired,
                                       facts_changed) for routers, which follow every bucket
  apikey:{id}                   hash   hash (sha256 of the key), tenant, role, name,
                                       created_at_s, last_used_s, revoked_at_s (tag {apikeys})
  apikeys                       set    every API key id, revoked ones included (tag {apikeys})
  tenant:{tenant}:open_jobs     set    ids of the tenant's non-terminal jobs (quota)
  tenant:{tenant}:adapter_bytes string bytes of the tenant's stored version blobs (quota)
  rate:{kind}:{subject}:{n}     string requests or tokens of one rate window n; expires (no tag:
                                       one key per transaction)
"""

import hashlib

PREFIX = "loramem:"

TRAINER_GROUP = "trainers"  # the consumer group of every tenant's job stream

# Tenants are spread over this many buckets, each one hash tag and so one slot of a Redis
# Cluster. A bucket holds its tenants' keys and its share of what is shared across tenants
# (the job rotation, the event stream, the tenant list), so that a fact's transaction can
# queue its job and announce it in the same slot; workers and routers follow every bucket,
# so this is also the number of streams a router polls on a cluster. 64 lets a cluster
# spread tenants over up to 64 masters. Changing it moves every key (a migration).
BUCKETS = 64
BUCKET_IDS = tuple(f"{b:02x}" for b in range(BUCKETS))

# Bounded so that an events stream cannot grow without limit; routers that fall further
# behind than this rebuild their index from the registry (server/reconcile.py EventFollower).
EVENTS_STREAM_MAXLEN = 20_000  # per bucket

# A requested merge build is not queued again for this long; after it a failed build
# may be retried by the next request that wants it.
MERGE_REQUEST_TTL_S = 3600

_API_KEYS_TAG = "{apikeys}"  # key records and their set change in one transaction


def bucket(tenant: str) -> str:
    """The tenant's bucket: two hex digits, stable across processes and hosts."""
    return BUCKET_IDS[int(hashlib.sha256(tenant.encode()).hexdigest()[:8], 16) % BUCKETS]


def bucket_of_job(job_id: str) -> str:
    """A job id starts with its tenant's bucket (names.new_job_id); any other string (an
    id a client made up) gets a bucket of its own hash, where nothing is found."""
    head = job_id[:2]
    return head if head in BUCKET_IDS else bucket(job_id)


def module_bucket(name: str) -> str:
    """The bucket of module id `name`, "<tenant>~<name>" (names.py): its tenant's."""
    return bucket(name.rpartition("~")[0])


def _in(bucket_id: str) -> str:
    return f"{PREFIX}{{b:{bucket_id}}}:"


def _t(tenant: str) -> str:
    return _in(bucket(tenant))


def _m(module_name: str) -> str:
    return _in(module_bucket(module_name))


def events_stream(bucket_id: str) -> str:
    return f"{_in(bucket_id)}stream:events"


def jobs_ready(bucket_id: str) -> str:
    return f"{_in(bucket_id)}jobs:ready"


def job_streams(bucket_id: str) -> str:
    return f"{_in(bucket_id)}jobs:streams"


def tenants(bucket_id: str) -> str:
    return f"{_in(bucket_id)}tenants"


def retired_versions(bucket_id: str) -> str:
    return f"{_in(bucket_id)}versions:retired"


def fact(tenant: str, fact_id: str) -> str:
    return f"{_t(tenant)}fact:{tenant}:{fact_id}"


def tenant_facts(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:facts"


def tenant_modules(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:modules"


def tenant_open_module(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:open_module"


def tenant_merges(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:merges"


def merge_request(name: str, sources: str) -> str:
    """`sources` names the exact source versions, e.g. "a@v2,b@v1"."""
    return f"{_m(name)}merge:{name}:{sources}"


def module(name: str) -> str:
    return f"{_m(name)}module:{name}"


def module_facts(name: str) -> str:
    return f"{_m(name)}module:{name}:facts"


def module_deltas(name: str) -> str:
    """The delta modules of module `name` that consolidation has not folded in yet."""
    return f"{_m(name)}module:{name}:deltas"


def deltas(bucket_id: str) -> str:
    """Every unfolded delta module of the bucket's tenants, scored by when it was made:
    what an idle worker looks through for consolidation that is due."""
    return f"{_in(bucket_id)}deltas"


def version(name: str, number: int) -> str:
    return f"{_m(name)}version:{name}:{number}"


def version_files(name: str, number: int) -> str:
    return f"{_m(name)}version:{name}:{number}:files"


def job(job_id: str) -> str:
    return f"{_in(bucket_of_job(job_id))}job:{job_id}"


def job_stream(tenant: str) -> str:
    return f"{_t(tenant)}stream:jobs:{tenant}"


def module_lock(name: str) -> str:
    return f"{_m(name)}lock:module:{name}"


def api_key(key_id: str) -> str:
    return f"{PREFIX}{_API_KEYS_TAG}:apikey:{key_id}"


def api_keys() -> str:
    return f"{PREFIX}{_API_KEYS_TAG}:apikeys"


def tenant_open_jobs(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:open_jobs"


def tenant_adapter_bytes(tenant: str) -> str:
    return f"{_t(tenant)}tenant:{tenant}:adapter_bytes"


def rate_window(kind: str, subject: str, window: int) -> str:
    """`kind` "requests" or "tokens"; `subject` a key id, or "tenant=<name>" with auth off."""
    return f"{PREFIX}rate:{kind}:{subject}:{window}"
