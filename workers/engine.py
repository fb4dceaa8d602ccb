"""The interface every engine implements; the worker loop knows only this."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from schemas.request import ChatBody, ChatMessage
from schemas.result import TokenLogprob
from schemas.tools import Tool


@dataclass(frozen=True)
class EngineStep:
    """What one step of a generation added: new text, its tokens, and whether it finished."""

    text: str
    """Text generated since the previous step."""
    new_tokens: int
    prompt_tokens: int
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """Log-probabilities of this step's tokens, when the request asked for them."""
    cached_tokens: int | None = None
    """Prompt tokens found in the engine's prefix cache, when the engine tells."""


class Engine(Protocol):
    """A continuous-batching engine: many generations in flight, each streamed by steps.

    Errors are LlmqError: PROMPT_TOO_LARGE for a prompt the model cannot take,
    ENGINE_ERROR for a failed generation, ENGINE_UNAVAILABLE once the engine is dead.
    """

    def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        """Stream one chat completion; closing the iterator early aborts it in the engine.
        `tenant`: whose request it is (an engine may keep tenants' cached prefixes apart);
        `deadline`: the request's (Unix time), for an engine that waits on its own between
        attempts (it must leave a fallback model the time to answer)."""
        ...

    def prompt_tokens(
        self, messages: list[ChatMessage], tools: list[Tool] | None = None
    ) -> int | None:
        """Tokens these messages (and tools) make as a prompt; None when the engine cannot
        tell. It may block (a tokenizer's work): the worker calls it in a thread."""
        ...

    def shutdown(self) -> None:
        """Stop the engine and its processes."""
        ...
