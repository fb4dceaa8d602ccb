"""Every name llmq gives in Kafka and Redis, in one place: topics and the topic plan, consumer
groups, the stream processor's app, table and agent names, record headers, Redis keys."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from schemas.lanes import Lane

# Topics.

REQUESTS = "llmq.requests"
"""Apps publish InferenceRequest JSON here (any key; the correlation_id is a good one)."""
REQUESTS_KEYED = "llmq.requests.keyed"
"""Internal: admitted requests re-keyed by fingerprint, so identical copies meet on one
partition (coalescing). Same partition count as llmq.completions."""
COMPLETIONS = "llmq.completions"
"""Workers publish Completion records here, keyed by fingerprint."""
RESULTS = "llmq.results"
"""The default reply topic: InferenceResult JSON keyed by correlation_id."""
METERING = "llmq.metering"
"""One MeteringEvent per engine generation: tokens, cost, latency."""
DLQ = "llmq.dlq"
"""Poison and failed records, the raw bytes with the reason in headers."""
TOKENS = "llmq.tokens"
"""Token deltas of streamed answers (TokenDelta JSON), keyed by correlation_id."""
CANCELS = "llmq.cancels"
"""Requests nobody waits for any more (Cancel JSON), keyed by correlation_id; every worker
reads all of it."""
ALERTS = "llmq.alerts"
"""Budget alerts (BudgetAlert JSON), keyed by tenant: a tenant crossed 50, 80 or 100% of its
budget, once per threshold and period."""
BATCH_RESULTS = "llmq.batch-results"
"""The reply topic of Batch API lines (InferenceResult JSON keyed by correlation_id): the
front doors' batch collectors read it into each batch's output and error files."""
WORK_PREFIX = "llmq.work."

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
DEFAULT_PARTITIONS = 4
"""Partitions of each topic keyed by fingerprint or id (LLMQ_PARTITIONS): the most worker
replicas, and stream-processor instances, that can share a topic's load."""


def work_topic(model: str, lane: Lane) -> str:
    """The topic that the workers of `model` consume for `lane`."""
    return f"{WORK_PREFIX}{model}.{lane.value}"


def work_topics(model: str) -> list[str]:
    """All lanes' topics of one model, highest priority first."""
    return [work_topic(model, lane) for lane in Lane]


def split_work_topic(topic: str) -> tuple[str, Lane]:
    """The model and lane of a work topic; ValueError for any other topic."""
    if not topic.startswith(WORK_PREFIX):
        raise ValueError(f"{topic!r} is not a work topic")
    model, _, lane = topic.removeprefix(WORK_PREFIX).rpartition(".")
    return model, Lane(lane)


@dataclass(frozen=True)
class TopicSpec:
    """A topic llmq creates up front, with its partition count: auto-created topics get the
    broker's default count, and faust's agents refuse topics whose counts disagree."""

    name: str
    partitions: int


def topic_plan(models: Iterable[str], partitions: int) -> list[TopicSpec]:
    """Every topic llmq needs for these catalog models. Topics keyed by fingerprint share one
    count (coalescing needs a request and its completion on the same partition); the DLQ
    has one partition, so its records stay in the order they failed. faust creates its
    table's changelog itself (changelog_topic)."""
    shared = [REQUESTS, REQUESTS_KEYED, COMPLETIONS, RESULTS, METERING, TOKENS, CANCELS, ALERTS]
    shared.append(BATCH_RESULTS)
    shared += [topic for model in models for topic in work_topics(model)]
    return [TopicSpec(name, partitions) for name in shared] + [TopicSpec(DLQ, 1)]


# Consumer groups and the stream processor's faust names.

STREAMS_APP_ID = "llmq-streams"
"""The stream processor's faust app id, which is also its consumer group (LLMQ_APP_ID)."""
INFLIGHT_TABLE = "llmq.inflight"
"""The coalescing table (faust): fingerprint -> the generation in flight and its followers."""
AGENT_ADMIT = "llmq.admit"
AGENT_DEDUPE = "llmq.dedupe"
AGENT_COMPLETE = "llmq.complete"
AGENT_METER = "llmq.meter"


BATCHES_GROUP = "llmq.batches"
"""The front doors' batch collectors: they share llmq.batch-results' partitions."""


def worker_group(model: str) -> str:
    """The consumer group of every worker replica of `model` (their lag is its backlog)."""
    return f"llmq.workers.{model}"


def changelog_topic(app_id: str, table: str = INFLIGHT_TABLE) -> str:
    """The topic faust backs `table` with (compacted; created by faust)."""
    return f"{app_id}-{table}-changelog"


# Record headers.

HEADER_REASON = "llmq-reason"
HEADER_SOURCE_TOPIC = "llmq-source-topic"
HEADER_ERROR_CODE = "llmq-error-code"
HEADER_TOKENS = "llmq-tokens"
"""On a work item: its estimated tokens (prompt + max_tokens), which the autoscaler sums."""
HEADER_ORIGINAL_BYTES = "llmq-original-bytes"
"""On a DLQ record whose value was cut to fit: the length of the value it replaces."""

# Redis keys. Per-tenant keys put the tenant in braces: its keys share one cluster hash slot,
# and tenant `a:b` with id `c` stays apart from tenant `a` with id `b:c` (tenants are
# identifiers, without braces).

REDIS_CACHE_PREFIX = "llmq:cache:"
REDIS_RESULT_PREFIX = "llmq:result:"
REDIS_SEMANTIC_PREFIX = "llmq:sem:"
REDIS_RATE_PREFIX = "llmq:rate:"
REDIS_SPEND_PREFIX = "llmq:spend:"
REDIS_STARTS_PREFIX = "llmq:starts:"
REDIS_ANSWERED_PREFIX = "llmq:answered:"
REDIS_CLAIM_PREFIX = "llmq:claim:"
REDIS_HANDED_PREFIX = "llmq:handed:"
REDIS_READERS_PREFIX = "llmq:readers:"
REDIS_COSTS_PREFIX = "llmq:costs:"
REDIS_EXPERIMENT_PREFIX = "llmq:exp:"
REDIS_FILE_PREFIX = "llmq:file:"
REDIS_BATCH_PREFIX = "llmq:batch:"
REDIS_RESPONSE_PREFIX = "llmq:response:"
REDIS_RESPONSE_OUTPUT_PREFIX = "llmq:response-output:"
REDIS_RESPONSE_TURN_PREFIX = "llmq:response-turn:"
BATCHES_ACTIVE = "llmq:batches:active"
"""Batch API: the set of batch ids not finished yet, which the front doors' runners drive."""
REDIS_EPOCH = "llmq:epoch"
"""A random token set once, without expiry: gone or replaced, Redis lost its data (the stream
processor looks every 30 s: streams/redis_epoch.py)."""


def cache_key(fingerprint: str) -> str:
    """Exact response cache: -> ChatCompletion JSON (the tenant is in the fingerprint)."""
    return REDIS_CACHE_PREFIX + fingerprint


def result_key(tenant: str, correlation_id: str) -> str:
    """Result store: -> InferenceResult JSON, first write wins. Per tenant, so that no tenant
    reads another's result by its id and equal ids of two tenants never collide."""
    return f"{REDIS_RESULT_PREFIX}{_tenant(tenant)}:{correlation_id}"


def semantic_stream_key(scope: str) -> str:
    """Semantic cache: a Redis stream of {fp, t (question), v (float32 vector)}; an entry
    without v forgets fp; trimmed to the newest max_entries."""
    return REDIS_SEMANTIC_PREFIX + scope


def starts_key(topic: str, partition: int, offset: int) -> str:
    """Crash-loop bound: a set of the work record's starts without an outcome (one id each)."""
    return f"{REDIS_STARTS_PREFIX}{{{topic}/{partition}}}:{offset}"


def answered_key(topic: str, partition: int, offset: int) -> str:
    """The correlation id of a work record whose outcome was published, so that the next
    owner of its partition (its offset not committed yet) does not generate it again."""
    return f"{REDIS_ANSWERED_PREFIX}{{{topic}/{partition}}}:{offset}"


def claim_key(tenant: str, correlation_id: str) -> str:
    """A speculative streamed request's first answerer: -> "cache" or "engine", set once, so
    that its reader never gets both the engine's first tokens and a cached answer."""
    return f"{REDIS_CLAIM_PREFIX}{_tenant(tenant)}:{correlation_id}"


def handed_key(tenant: str, correlation_id: str, step: str) -> str:
    """The mark of a generation's work handed on (an escalation, a fallback, a retry), set
    once that work is sent, so that its completion read again does not send it again;
    `step` names the generation (it has no ":")."""
    return f"{REDIS_HANDED_PREFIX}{_tenant(tenant)}:{correlation_id}:{step}"


def rate_keys(tenant: str, correlation_id: str) -> tuple[str, str, str]:
    """Rate limits: the requests and the tokens buckets' state, and the mark of a request
    charged (so that its record read again is not charged twice)."""
    prefix = f"{REDIS_RATE_PREFIX}{_tenant(tenant)}:"
    return prefix + "requests", prefix + "tokens", f"{prefix}charged:{correlation_id}"


def rate_call_key(tenant: str, call_id: str) -> str:
    """Rate limits: the outcome of a call of several choices (charged once for all of them,
    or refused), which its other choices follow."""
    return f"{REDIS_RATE_PREFIX}{_tenant(tenant)}:call:{call_id}"


def readers_key(tenant: str, correlation_id: str) -> str:
    """How many resumed streams of a request are being read now, on any front door: the door
    whose client left cancels the request after the grace time only while none is."""
    return f"{REDIS_READERS_PREFIX}{_tenant(tenant)}:{correlation_id}"


def spend_key(tenant: str, name: str) -> str:
    """Budgets: <day or month> -> USD spent, fed by metering; seen:<day>, a set of counted
    events so that a redelivered event counts once; holds, holds:until and held, what
    admitted requests may still cost; alerted:<day or month>:<budget>:<percent>, an alert
    sent."""
    return f"{REDIS_SPEND_PREFIX}{_tenant(tenant)}:{name}"


def costs_keys(hour: str) -> tuple[str, str]:
    """Cost rollups of one UTC hour ("2026-11-30T14"): a hash of "tenant<TAB>model<TAB>lane
    <TAB>cache<TAB>figure" -> sum, and the set of metering events it counted (so a
    redelivered one counts once). One hash slot, so one script updates both."""
    return f"{REDIS_COSTS_PREFIX}{{{hour}}}", f"{REDIS_COSTS_PREFIX}{{{hour}}}:seen"


def experiment_keys(experiment: str, hour: str) -> tuple[str, str]:
    """An A/B test's answers per arm: a hash of "arm<TAB>figure" -> sum (counts, cost, a
    latency histogram), and the set of the hour's answers it counted (`experiment_answer`).
    One hash slot, so one script updates both."""
    tag = f"{REDIS_EXPERIMENT_PREFIX}{{{experiment}}}"
    return tag, f"{tag}:seen:{hour}"


def experiment_answer(tenant: str, correlation_id: str) -> str:
    """An answer's member of an experiment's seen set: a correlation id is unique only per
    tenant, so two tenants' equal ids are two answers ("/" is in neither)."""
    return f"{tenant}/{correlation_id}"


def file_keys(file_id: str) -> tuple[str, str]:
    """Batch API file: a hash of its fields (tenant, filename, bytes, lines, ...), and a hash
    of its lines by number from 0 (an output or error file's lines are its batch's)."""
    tag = f"{REDIS_FILE_PREFIX}{{{file_id}}}"
    return tag, f"{tag}:lines"


def batch_keys(batch_id: str) -> dict[str, str]:
    """Batch API batch, one hash slot so that one script updates them together: `batch`, a
    hash of its fields and counts; `output` and `errors`, its result lines by line number
    (a line is in one of them, once); `ids`, line number -> custom_id; `asked`, line number
    -> what a response's line asked (JSON, echoed in its output); `attempts`, line number ->
    its latest attempt; `retry`, a sorted set of lines to send again at a time; `lease`, the
    front door driving it."""
    tag = f"{REDIS_BATCH_PREFIX}{{{batch_id}}}"
    parts = ("output", "errors", "ids", "asked", "attempts", "retry", "lease")
    return {"batch": tag, **{part: f"{tag}:{part}" for part in parts}}


def response_key(tenant: str, response_id: str) -> str:
    """Responses API: a stored response -> its object and the ids of the responses it
    continues (JSON; an older front door's: its whole conversation instead), per tenant; kept
    as long as its turn (response_turn_key)."""
    return f"{REDIS_RESPONSE_PREFIX}{_tenant(tenant)}:{response_id}"


def response_output_key(tenant: str, response_id: str) -> str:
    """Responses API: a stored response's output items (JSON), kept beside it as long, so
    that an input item referencing one reads them without the whole conversation."""
    return f"{REDIS_RESPONSE_OUTPUT_PREFIX}{_tenant(tenant)}:{response_id}"


def response_turn_key(tenant: str, response_id: str) -> str:
    """Responses API: a stored response's turn, the messages it added to the conversation it
    continues (JSON), read with the turns of those it continues and kept as long as the
    newest response continuing them."""
    return f"{REDIS_RESPONSE_TURN_PREFIX}{_tenant(tenant)}:{response_id}"


def tenant_index_key(tenant: str, kind: str) -> str:
    """Batch API: a tenant's files or batches (`kind`), a sorted set of ids by creation."""
    return f"{REDIS_BATCH_PREFIX}{_tenant(tenant)}:{kind}"


def tenant_active_key(tenant: str) -> str:
    """Batch API: a tenant's batches not finished yet (its share of BATCHES_ACTIVE), a sorted
    set of ids by when each was admitted (Redis's clock, ms), which bounds how many it has."""
    return f"{REDIS_BATCH_PREFIX}{_tenant(tenant)}:active"


def tenant_index_gone_key(tenant: str, kind: str, period: int) -> str:
    """Batch API: the ids a listing dropped from a tenant's index (found deleted or expired)
    in one period, with their scores there, so that a listing paged after one goes on (in the
    index's hash slot)."""
    return f"{tenant_index_key(tenant, kind)}:gone:{period}"


def _tenant(tenant: str) -> str:
    if "{" in tenant or "}" in tenant:
        raise ValueError(f"a tenant has no braces: {tenant!r}")
    return f"{{{tenant}}}"
