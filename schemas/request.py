"""The request contract: an OpenAI chat-completions body inside llmq's envelope."""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from schemas.lanes import Lane
from schemas.topics import RESULTS, TOPIC_NAME

SCHEMA_VERSION: Literal[1] = 1

MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 200_000
MAX_STOP_SEQUENCES = 4

IDENTIFIER = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER.pattern)]
"""Correlation ids and tenants: printable, no spaces, safe in Redis keys and logs."""
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
TopicName = Annotated[str, StringConstraints(pattern=TOPIC_NAME.pattern)]


class CacheMode(StrEnum):
    """Whether the response cache may answer this request, and may keep its answer."""

    AUTO = "auto"
    """Cache only deterministic requests (temperature 0 or a fixed seed)."""
    ALWAYS = "always"
    """Opt in: cache even a sampled answer and serve it to identical requests."""
    OFF = "off"
    """Neither read nor fill the cache."""


class ChatMessage(BaseModel):
    """One message of an OpenAI chat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)


class ChatBody(BaseModel):
    """The OpenAI chat-completions body: the fields llmq serves, each bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: ModelName | None = None
    """Accepted so that an OpenAI body can be sent as it is; the envelope's model wins."""
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES
    )
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logprobs: bool = False
    stream: bool = False

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: object) -> object:
        """OpenAI allows `stop` to be one string; keep one shape."""
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            return {**data, "stop": [data["stop"]]}
        return data

    @property
    def deterministic(self) -> bool:
        """Greedy or seeded: the same request gives the same answer."""
        return self.temperature == 0.0 or self.seed is not None

    def prompt_chars(self) -> int:
        """Characters across all messages: a cheap bound checked before tokenizing."""
        return sum(len(m.content) for m in self.messages)


class InferenceRequest(BaseModel):
    """What an app publishes on llmq.requests."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: Identifier
    tenant: Identifier = "default"
    model: ModelName | None = None
    """A model of the catalog; when absent, the body's model, then the catalog default."""
    lane: Lane = Lane.STANDARD
    reply_to: TopicName = RESULTS
    deadline: float | None = Field(default=None, gt=0)
    """Unix time after which the answer is no longer wanted (an `expired` error instead)."""
    cache: CacheMode = CacheMode.AUTO
    created_at: float = Field(default_factory=time.time, gt=0)
    """When the app sent it (Unix time); end-to-end latency is measured from here."""
    body: ChatBody

    @model_validator(mode="after")
    def _one_model(self) -> Self:
        if self.model and self.body.model and self.model != self.body.model:
            raise ValueError(
                f"envelope model {self.model!r} and body model {self.body.model!r} differ; "
                "set one of them"
            )
        return self

    @property
    def requested_model(self) -> str | None:
        """The model the app asked for, wherever it put it."""
        return self.model or self.body.model

    @property
    def cacheable(self) -> bool:
        """Whether the response cache may serve or keep this request's answer."""
        if self.cache is CacheMode.OFF:
            return False
        return self.cache is CacheMode.ALWAYS or self.body.deterministic

    def expired(self, now: float | None = None) -> bool:
        """True once the deadline has passed."""
        now = time.time() if now is None else now
        return self.deadline is not None and now > self.deadline
