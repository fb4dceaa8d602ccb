"""Prometheus metrics of a worker."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from llmq.startup import at_zero
from schemas.errors import ErrorCode
from schemas.lanes import Lane

READY = Gauge("llmq_worker_ready", "1 once the engine is loaded and the worker consumes")
IN_FLIGHT = Gauge("llmq_worker_in_flight", "Requests in the engine now")
MAX_IN_FLIGHT = Gauge("llmq_worker_max_in_flight", "The model's max_inflight: the credit limit")
GENERATIONS = at_zero(
    Counter(
        "llmq_worker_generations_total", "Engine generations finished, by outcome", ["outcome"]
    ),
    ("ok", *ErrorCode),
)
TOKENS = at_zero(
    Counter("llmq_worker_tokens_total", "Tokens processed", ["kind"]), ("prompt", "completion")
)
TTFT = Histogram(
    "llmq_worker_ttft_seconds",
    "Time to first token",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REANSWERS_SKIPPED = Counter(
    "llmq_worker_reanswers_skipped_total",
    "Records redelivered by a rebalance after their outcome was published, not generated again",
)
STARTED = at_zero(
    Counter("llmq_worker_started_total", "Records taken from their lane into service", ["lane"]),
    Lane,
)
BUFFERED = Gauge(
    "llmq_worker_buffered", "Records fetched and waiting for their lane's turn", ["lane"]
)
LANE_IN_FLIGHT = Gauge(
    "llmq_worker_lane_in_flight", "Requests in the engine now, by lane", ["lane"]
)
QUEUE = Histogram(
    "llmq_worker_queue_seconds",
    "From the work's last send (or its backoff's end) to the start of generation, by lane",
    ["lane"],
    # Past the batch lane's target (LLMQ_DRAIN_BATCH_S: 900 s) too.
    buckets=(0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600),
)
DEAD_LETTERS = at_zero(
    Counter(
        "llmq_worker_dead_letters_total",
        "Work records a worker sent to llmq.dlq, by reason: crash_loop, unreadable",
        ["reason"],
    ),
    (ErrorCode.CRASH_LOOP, "unreadable"),
)
