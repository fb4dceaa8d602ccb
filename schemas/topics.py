"""Every Kafka topic, header and Redis key prefix that llmq uses, in one place."""

from __future__ import annotations

import re

from schemas.lanes import Lane

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
WORK_PREFIX = "llmq.work."

HEADER_REASON = "llmq-reason"
HEADER_SOURCE_TOPIC = "llmq-source-topic"
HEADER_ERROR_CODE = "llmq-error-code"
HEADER_ORIGINAL_BYTES = "llmq-original-bytes"
"""On a DLQ record whose value was cut to fit: the length of the value it replaces."""

REDIS_CACHE_PREFIX = "llmq:cache:"
"""Exact response cache: llmq:cache:<fingerprint> -> ChatCompletion JSON (tenant in fingerprint)."""
REDIS_RESULT_PREFIX = "llmq:result:"
"""Result store: llmq:result:{<tenant>}:<correlation_id> -> InferenceResult JSON, first write
wins (result_key)."""
REDIS_SEMANTIC_PREFIX = "llmq:sem:"
"""Semantic cache: llmq:sem:<scope> -> a Redis stream of {fp, t (question), v (float32
vector)}; an entry without v forgets fp; trimmed to the newest max_entries."""
REDIS_RATE_PREFIX = "llmq:rate:"
"""Rate limits: llmq:rate:{<tenant>}:requests|tokens -> token bucket state."""
REDIS_SPEND_PREFIX = "llmq:spend:"
"""Budgets: llmq:spend:{<tenant>}:<day or month> -> USD spent, fed by metering (and a
`seen:<day>` set of counted events, so a redelivered event counts once)."""

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def result_key(tenant: str, correlation_id: str) -> str:
    """The result store's key of one result: per tenant, so that no tenant reads another's
    result by its id and equal ids of two tenants never collide. The braces keep tenant
    `a:b` with id `c` apart from tenant `a` with id `b:c` (tenants are identifiers)."""
    if "{" in tenant or "}" in tenant:
        raise ValueError(f"a tenant has no braces: {tenant!r}")
    return f"{REDIS_RESULT_PREFIX}{{{tenant}}}:{correlation_id}"


def work_topic(model: str, lane: Lane) -> str:
    """The topic that the workers of `model` consume for `lane`."""
    return f"{WORK_PREFIX}{model}.{lane.value}"


def work_topics(model: str) -> list[str]:
    """All lanes' topics of one model, highest priority first."""
    return [work_topic(model, lane) for lane in Lane]
