"""Prometheus metrics of the front door."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from gateway.batch.objects import FINAL
from gateway.openai import STATUS
from llmq.startup import at_zero

READY = Gauge("llmq_gateway_ready", "1 once the front door reads replies and takes requests")
REQUESTS = at_zero(
    Counter(
        "llmq_gateway_requests_total",
        "HTTP requests for an answer (chat completions, completions, responses) by HTTP "
        "status and whether they streamed",
        ["status", "stream"],
    ),
    {200, *STATUS.values()},  # answered, or an error a reply carries
    ("true", "false"),
)
WAITING = Gauge("llmq_gateway_waiting", "Requests waiting for their answer")
LATENCY = Histogram(
    "llmq_gateway_latency_seconds",
    "From the HTTP request to its whole answer (streamed: to the last piece, or to its "
    "client's leaving)",
    ["stream"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
FIRST_PIECE = Histogram(
    "llmq_gateway_first_piece_seconds",
    "From a streamed HTTP request to its first piece of answer (time to first token)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
OVERLOADED = at_zero(
    Counter(
        "llmq_gateway_overloaded_total",
        "Requests refused at once, with Retry-After, by the bound the door was at: calls "
        "(LLMQ_API_OPEN_CALLS) or bytes (LLMQ_API_BODY_BYTES), a 503; tenant (one tenant's "
        "requests at three quarters of either), a 429",
        ["bound"],
    ),
    ("calls", "bytes", "tenant"),
)
CANCELLED = Counter(
    "llmq_gateway_cancelled_total", "Requests whose client went away before the answer"
)
BATCH_LINES = at_zero(
    Counter(
        "llmq_gateway_batch_lines_total",
        "Batch API lines: sent (each attempt), then output, error or retry (refused for a while)",
        ["outcome"],
    ),
    ("sent", "output", "error", "retry"),
)
BATCHES = at_zero(
    Counter("llmq_gateway_batches_total", "Batches that ended, by status", ["status"]), FINAL
)
