"""Prometheus metrics of the stream processor."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from llmq.startup import at_zero
from schemas import names
from schemas.errors import ErrorCode

_RESULT_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
    300, 600, 900, 1800, 3600,  # the batch lane's target (LLMQ_DRAIN_BATCH_S: 900 s) and past
)  # fmt: skip

READY = Gauge("llmq_streams_ready", "1 once the stream processor consumes its topics")
REQUESTS = at_zero(
    Counter("llmq_streams_requests_total", "Requests by outcome", ["outcome"]),
    # At admission, admitted, rejected (dead-lettered) or refused (rate limit, budget);
    # then how an admitted one went on.
    ("admitted", "rejected", "refused", "routed", "coalesced", "cache_exact", "cache_semantic"),
)
SPECULATIONS = at_zero(
    Counter(
        "llmq_streams_speculations_total",
        "Cacheable requests sent to the engines while the semantic cache was looked up, by "
        "how the lookup ended",
        ["outcome"],
    ),
    # miss | hit (answered from the cache, generation cancelled) |
    # late (a hit, but the streamed request's engine had claimed it: the engine answers)
    ("miss", "hit", "late"),
)
SEMANTIC_SKIPPED = Counter(
    "llmq_streams_semantic_skipped_total",
    "Semantic cache lookups taken for misses without embedding their question: the embedder "
    "had not returned a call that a lookup gave up on",
)
REROUTES = at_zero(
    Counter(
        "llmq_streams_reroutes_total",
        "Work sent on to the next model of its route, or to the same model again",
        ["kind"],
    ),
    # escalated (cascade) | fell_back (engine failure) | retried (backoff) |
    # promoted (its client left; a coalesced copy leads a new generation)
    ("escalated", "fell_back", "retried", "promoted"),
)
DEAD_LETTERS = at_zero(
    Counter(
        "llmq_streams_dead_letters_total", "Records sent to llmq.dlq, by source topic", ["source"]
    ),
    (names.REQUESTS, names.REQUESTS_KEYED, names.COMPLETIONS, names.METERING),  # its sources
)
COALESCED = Histogram(
    "llmq_streams_coalesced_followers",
    "Copies answered by each generation besides its leader",
    buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)
REJECTIONS = at_zero(
    Counter("llmq_streams_rejections_total", "Rejected requests by error code", ["code"]),
    ErrorCode,
)
COMPLETIONS = at_zero(
    Counter(
        "llmq_streams_completions_total", "Completions turned into results, by status", ["status"]
    ),
    ("ok", "error"),  # InferenceResult.status
)
RESULT_LATENCY = Histogram(
    "llmq_result_latency_seconds",
    "From the app's created_at to the result, by cache status and lane (none for a rejection)",
    ["cache", "lane"],
    buckets=_RESULT_BUCKETS_S,
)
REDIS_DATA_LOST = Counter(
    "llmq_streams_redis_data_lost_total",
    "Times this stream processor found that Redis had lost its data (llmq:epoch gone or "
    "replaced): spend, batches, stored responses, results and cost history start empty",
)
SPEND = Counter("llmq_streams_metered_usd", "USD of metered generations counted towards budgets")
BUDGET_USED = Gauge(
    "llmq_budget_used_ratio",
    "A tenant's spend over its budget in the current period, as last counted here; 1 once a "
    "request was refused because what is left cannot pay for it",
    ["tenant"],
)
BUDGET_PERIOD_END = Gauge(
    "llmq_budget_period_end_seconds",
    "When the period of the tenant's llmq_budget_used_ratio ends (Unix time): past it, the "
    "ratio is of a period gone (a tenant quiet since; the alert rules leave it out)",
    ["tenant"],
)
BUDGET_ALERTS = Counter(
    "llmq_budget_alerts_total",
    "Budget thresholds crossed (once per tenant, threshold and period across all instances)",
    ["tenant", "threshold"],
)
COSTS_EVENTS = Counter(
    "llmq_costs_events",
    "Metering events counted in the cost rollups: generations (cache none) and answers served "
    "without one (exact, semantic, coalesced)",
    ["tenant", "model", "lane", "cache"],
)
COSTS_USD = Counter("llmq_costs_usd", "USD spent, as metered", ["tenant", "model", "lane", "cache"])
COSTS_SAVED_USD = Counter(
    "llmq_costs_saved_usd",
    "USD not spent: what the generations behind cached and coalesced answers cost",
    ["tenant", "model", "lane", "cache"],
)
COSTS_TOKENS = Counter(
    "llmq_costs_tokens", "Metered tokens by kind (prompt, completion)", ["tenant", "model", "kind"]
)
