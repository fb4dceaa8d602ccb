"""The streaming contracts: token deltas on llmq.tokens and cancellations on llmq.cancels."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.request import SCHEMA_VERSION
from schemas.result import TokenLogprob, Usage


class TokenDelta(BaseModel):
    """The next piece of a streamed answer: llmq.tokens, keyed by correlation_id.

    A worker publishes several tokens per record (every few tens of milliseconds); the last
    record of a generation carries its finish_reason and usage. `seq` counts records within
    one `generation`: a reader drops repeats, and a generation that starts over (a retry, or
    a redelivery after a worker died) has another id. The final result on the reply topic
    stays the truth: a reader completes its stream from it.
    """

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: str
    tenant: str
    generation: str = ""
    """Which generation this piece belongs to (unique per worker delivery)."""
    seq: int = Field(default=0, ge=0)
    text: str = ""
    tokens: int = Field(default=0, ge=0)
    logprobs: list[TokenLogprob] | None = None
    """The log-probabilities of this record's tokens, when the request asked for them."""
    finish_reason: str | None = None
    """On the last record of a generation only."""
    usage: Usage | None = None
    """On the last record of a generation only."""
    model: str | None = None
    follows: str | None = None
    """A notice instead of a piece: this request shares the generation in flight for that
    correlation_id (coalescing), whose pieces are its stream."""


class Cancel(BaseModel):
    """Nobody waits for this request's generation any more (its HTTP client went away, or a
    cache answered it): llmq.cancels, keyed by correlation_id. Every worker reads every
    cancellation and aborts the generation if it runs it, or skips the work item when it
    arrives."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: str
    tenant: str
    at: float = Field(default_factory=time.time)
    answered: bool = False
    """Answered from a cache (a speculative generation): the worker's outcome is SUPERSEDED,
    not CANCELLED, and nobody gets it as a reply."""
    speculation: str | None = None
    """The speculative send it stops (WorkItem.speculation); None: every generation of the
    request."""

    def stops(self, speculation: str | None) -> bool:
        """Whether it stops the generation of a work item sent with this `speculation`."""
        return self.speculation is None or self.speculation == speculation
