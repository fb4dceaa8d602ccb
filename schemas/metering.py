"""Metering events: what each engine generation consumed and cost."""

from __future__ import annotations

import hashlib
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.lanes import Lane
from schemas.request import SCHEMA_VERSION
from schemas.result import CacheStatus


class MeteringEvent(BaseModel):
    """One per generation, and one per answer served without one (from a cache, or a copy
    coalesced with another request's generation), on llmq.metering, keyed by tenant."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: str
    tenant: str
    model: str
    lane: Lane
    fingerprint: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    prompt_tokens_saved: int = Field(default=0, ge=0)
    """Prompt tokens that prompt compression removed before the engine saw the prompt."""
    cost_usd: float = Field(ge=0)
    queue_ms: float
    ttft_ms: float | None
    engine_ms: float
    worker: str
    experiment: str | None = None
    """The A/B test the request took part in, and its arm (the route's)."""
    arm: str | None = None
    cache: CacheStatus = CacheStatus.NONE
    """How the answer was served: none (a generation), exact, semantic or coalesced."""
    saved_usd: float = Field(default=0.0, ge=0)
    """For an answer served without a generation: what its generation cost, at the prices
    of the model that made it (cost_usd is 0)."""
    outcome: str = "ok"
    """ok, or the error code of a generation cut short (cancelled, expired) whose tokens
    were spent all the same."""
    at: float = Field(default_factory=time.time)

    @property
    def generated(self) -> bool:
        """An engine generation's event (the others meter answers served without one)."""
        return self.cache is CacheStatus.NONE

    @property
    def event_id(self) -> str:
        """What identifies this event across redeliveries (a retried generation is a new
        event: it has its own `at`, and it did cost again). An answer served without one is
        metered once per request, not by its time: that is the answer's, made anew when the
        result store cannot say which answer came first (Redis away)."""
        if not self.generated:
            key = f"{self.tenant}\0{self.correlation_id}\0saved"
            return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
        key = f"{self.correlation_id}\0{self.fingerprint}\0{self.at!r}"
        return hashlib.blake2b(key.encode(), digest_size=12).hexdigest()
