"""The stream processor's settings (LLMQ_* environment variables)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from schemas.names import DEFAULT_PARTITIONS, STREAMS_APP_ID
from schemas.retry import RetryPolicy
from schemas.settings import ServiceSettings
from streams.affinity import DEFAULT_PREFIX_CHARS
from streams.semantic import DEFAULT_THRESHOLD
from streams.tenant_labels import DEFAULT_LIMIT


class StreamSettings(ServiceSettings):
    """One stream-processor instance; run more with the same app_id to scale out."""

    app_id: str = Field(default=STREAMS_APP_ID, pattern=r"^[A-Za-z0-9._-]{1,100}$")
    """The faust app id, which is also its Kafka consumer group (LLMQ_APP_ID)."""
    partitions: int = Field(default=DEFAULT_PARTITIONS, ge=1, le=256)
    """Partitions of llmq.requests and llmq.completions (LLMQ_PARTITIONS)."""
    replication_factor: int = Field(default=1, ge=1, le=16)
    """Replicas of the topics faust creates itself (its table's changelog, its assignor's
    topic, the reply topics it creates): e.g. 3 (LLMQ_REPLICATION_FACTOR). llmq's own topics
    get the same number from `llmq topics --create` (unset there: the cluster's default)."""
    concurrency: int = Field(default=8, ge=1, le=256)
    """Requests admission handles at once (Redis and broker round trips overlap). The
    stages that own the coalescing table run one record at a time per partition."""
    data_dir: Path = Path(tempfile.gettempdir()) / "llmq-streams"
    """faust's local state (table stores); one per instance (LLMQ_DATA_DIR)."""
    cache_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long the exact response cache keeps an answer (LLMQ_CACHE_TTL_S)."""
    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long the result store keeps a result (LLMQ_RESULT_TTL_S)."""
    drain_timeout_s: float = Field(default=20.0, gt=0, le=3600)
    """On SIGTERM: how long records in flight may still finish (LLMQ_DRAIN_TIMEOUT_S); past
    it, most often with Kafka away, the process exits without committing them, and the next
    instance reads them again. Keep it under the grace period (30 s in deploy/k8s)."""
    coalesce_stale_s: float = Field(default=900.0, gt=0)
    """A generation in flight for longer is presumed lost: the next copy leads a new one
    and inherits the waiting followers (LLMQ_COALESCE_STALE_S)."""
    semantic_cache: bool = True
    """Answer paraphrases of cached requests from the semantic cache (LLMQ_SEMANTIC_CACHE)."""
    semantic_threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0, le=1)
    """Cosine similarity from which a cached question is checked by the guard
    (LLMQ_SEMANTIC_THRESHOLD); docs/semantic-cache.md has the hit and false-hit rates."""
    semantic_max_false_hit_rate: float = Field(default=0.0, ge=0, le=1)
    """The false-hit rate of the semantic cache an operator accepts
    (LLMQ_SEMANTIC_MAX_FALSE_HIT_RATE): 0 keeps the strict guard, which no labelled near miss
    passed; from streams.semantic.LENIENT_FALSE_HIT_BOUND (0.03) the guard also lets a
    paraphrase add a word to the question (docs/semantic-cache.md). The stream processor
    logs which guard it runs."""
    semantic_max_entries: int = Field(default=100_000, ge=1)
    """Entries kept per scope in Redis (LLMQ_SEMANTIC_MAX_ENTRIES)."""
    semantic_max_mirrored: int = Field(default=200_000, ge=1)
    """Entries one process mirrors in memory, all scopes together, about 2 KB each: 400 MiB
    beside the embedder's 780 (LLMQ_SEMANTIC_MAX_MIRRORED); at least
    LLMQ_SEMANTIC_MAX_ENTRIES. A scope that does not fit beside those looked up in the last
    minute is not mirrored meanwhile: its lookups miss (docs/semantic-cache.md)."""
    semantic_lookup_timeout_s: float = Field(default=5.0, gt=0, le=60)
    """A semantic lookup that takes longer is a miss (LLMQ_SEMANTIC_LOOKUP_TIMEOUT_S): each
    partition's records wait for their lookups in turn. Well above an embedding on busy
    cores (80-470 ms), so that a hit does not hang on the machine's load."""
    prefix_affinity_chars: int = Field(default=DEFAULT_PREFIX_CHARS, ge=0, le=1_000_000)
    """Work records whose prompts share their first this many characters go to one
    partition of their work topic, so one replica's prefix cache serves them, within a load
    bound (docs/prefix-affinity.md); 0: each goes where its fingerprint hashes
    (LLMQ_PREFIX_AFFINITY_CHARS)."""
    compress_prompts: bool = False
    """Normalise whitespace and invisible characters in prompts before they reach the
    engine; the tokens saved are metered (LLMQ_COMPRESS_PROMPTS)."""
    retry_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts at a generation that fails retriably (engine error or timeout) before the
    request is dead-lettered and answered with the failure (LLMQ_RETRY_ATTEMPTS)."""
    retry_base_delay_s: float = Field(default=1.0, gt=0, le=60)
    """Backoff before the first retry; it doubles per attempt, with jitter
    (LLMQ_RETRY_BASE_DELAY_S)."""
    retry_budget_s: float = Field(default=300.0, gt=0, le=3600)
    """No retry starts later than this after the generation's first failure
    (LLMQ_RETRY_BUDGET_S); the time it queued before is not counted."""
    tenants_file: Path | None = None
    """A TOML file of per-tenant rate limits and budgets (LLMQ_TENANTS_FILE); none: unlimited."""
    metrics_tenants: int = Field(default=DEFAULT_LIMIT, ge=0)
    """Tenants not named in the tenants file that get a `tenant` label of their own in this
    process's metrics, the first come (LLMQ_METRICS_TENANTS); the others share "other".
    Kafka apps may name any tenant, and Prometheus keeps every label value's series (up to
    38 per tenant and model); `llmq costs` has every tenant."""

    @model_validator(mode="after")
    def _a_scope_fits_in_memory(self) -> Self:
        """A full scope that could never be mirrored would never be looked up."""
        if self.semantic_max_mirrored < self.semantic_max_entries:
            raise ValueError(
                "LLMQ_SEMANTIC_MAX_MIRRORED must be at least LLMQ_SEMANTIC_MAX_ENTRIES"
            )
        return self

    def retry_policy(self) -> RetryPolicy:
        """How the complete stage retries a failed generation."""
        return RetryPolicy(
            max_attempts=self.retry_attempts,
            base_delay_s=self.retry_base_delay_s,
            max_delay_s=max(8.0, self.retry_base_delay_s),
            budget_s=self.retry_budget_s,
        )
