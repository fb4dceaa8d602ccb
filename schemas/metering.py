"""Metering events: what each engine generation consumed and cost."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.lanes import Lane
from schemas.request import SCHEMA_VERSION


class MeteringEvent(BaseModel):
    """One per generation, on llmq.metering, keyed by tenant."""

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
    outcome: str = "ok"
    """ok, or the error code of a generation cut short (cancelled, expired) whose tokens
    were spent all the same."""
    at: float = Field(default_factory=time.time)
