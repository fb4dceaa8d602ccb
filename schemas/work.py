"""Internal records between the stream processor and the workers."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field

from schemas.request import InferenceRequest
from schemas.result import ChatCompletion, ErrorInfo, Timings


class WorkItem(BaseModel):
    """An admitted request routed to a model: llmq.work.<model>.<lane>, keyed by fingerprint."""

    model_config = ConfigDict(frozen=True)

    request: InferenceRequest
    model: str
    """The model resolved by the stream processor; workers serve only their own."""
    fingerprint: str
    admitted_at: float = Field(default_factory=time.time)


class Completion(BaseModel):
    """A worker's outcome for one WorkItem: llmq.completions, keyed by fingerprint."""

    model_config = ConfigDict(frozen=True)

    work: WorkItem
    response: ChatCompletion | None = None
    error: ErrorInfo | None = None
    timings: Timings
    worker: str
    finished_at: float = Field(default_factory=time.time)
