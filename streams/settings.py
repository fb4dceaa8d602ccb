"""The stream processor's settings (LLMQ_* environment variables)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from schemas.settings import ServiceSettings


class StreamSettings(ServiceSettings):
    """One stream-processor instance; run more with the same app_id to scale out."""

    app_id: str = Field(default="llmq-streams", pattern=r"^[A-Za-z0-9._-]{1,100}$")
    """The faust app id, which is also its Kafka consumer group (LLMQ_APP_ID)."""
    partitions: int = Field(default=4, ge=1, le=256)
    """Partitions of llmq.requests and llmq.completions (LLMQ_PARTITIONS)."""
    concurrency: int = Field(default=8, ge=1, le=256)
    """Records each agent handles at once (Redis and broker round trips overlap)."""
    data_dir: Path = Path(tempfile.gettempdir()) / "llmq-streams"
    """faust's local state (table stores); one per instance (LLMQ_DATA_DIR)."""
    cache_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long the exact response cache keeps an answer (LLMQ_CACHE_TTL_S)."""
    result_ttl_s: int = Field(default=24 * 3600, ge=1)
    """How long the result store keeps a result (LLMQ_RESULT_TTL_S)."""
