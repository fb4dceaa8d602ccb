"""A request inside the worker: built from its Kafka record, fed by engine steps."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Self

from schemas.catalog import ModelSpec
from schemas.errors import LlmqError
from schemas.metering import MeteringEvent
from schemas.result import (
    AnswerMessage,
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    ErrorInfo,
    PromptTokensDetails,
    Timings,
    TokenLogprob,
    Usage,
)
from schemas.tools import ToolCall, finish_reason
from schemas.work import Completion, WorkItem
from workers.engine import EngineStep


@dataclass
class InFlight:
    """One generation's state: its text so far, token counts and timestamps."""

    work: WorkItem
    request_id: str
    started_at: float
    first_token_at: float | None = None
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    cached_tokens: int | None = None
    uncompressed_prompt_tokens: int | None = None
    """Prompt tokens of the app's messages before compression, when the engine can tell."""

    @classmethod
    def from_work(cls, work: WorkItem, request_id: str) -> Self:
        """Start the clock on a work item."""
        return cls(work=work, request_id=request_id, started_at=time.time())

    def add(self, step: EngineStep) -> None:
        """Fold one engine step in."""
        if self.first_token_at is None and step.new_tokens:
            self.first_token_at = time.time()
        self.text.append(step.text)
        self.logprobs.extend(step.logprobs)
        self.prompt_tokens = step.prompt_tokens
        self.completion_tokens += step.new_tokens
        if step.cached_tokens is not None:
            self.cached_tokens = step.cached_tokens
        if step.finished:
            self.finish_reason = step.finish_reason

    def timings(self, now: float) -> Timings:
        """Queue (of this send: WorkItem.queued_since), first-token and engine time so far."""
        ttft = None if self.first_token_at is None else (self.first_token_at - self.started_at)
        return Timings(
            queue_ms=max(0.0, (self.started_at - self.work.queued_since) * 1000),
            ttft_ms=None if ttft is None else ttft * 1000,
            engine_ms=(now - self.started_at) * 1000,
        )

    @property
    def mean_logprob(self) -> float | None:
        """Mean log-probability of the answer's tokens (the cascade's confidence signal)."""
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)

    @property
    def prompt_tokens_saved(self) -> int:
        """Prompt tokens that compression kept from the engine; 0 when unknown."""
        if self.uncompressed_prompt_tokens is None:
            return 0
        return max(0, self.uncompressed_prompt_tokens - self.prompt_tokens)

    @property
    def spent(self) -> bool:
        """Whether the engine did any work for it (a prompt read, or tokens made)."""
        return self.prompt_tokens > 0 or self.completion_tokens > 0

    def usage(self) -> Usage:
        """Token counts so far."""
        cached = self.cached_tokens
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.prompt_tokens + self.completion_tokens,
            prompt_tokens_details=None
            if cached is None
            else PromptTokensDetails(cached_tokens=cached),
        )

    def final_reason(self) -> str | None:
        """The finish reason the app reads, as the completion gives it: "tool_calls" for
        an answer of calls that ended by itself."""
        return self._reason(self.work.request.body.calls_in("".join(self.text)))

    def _reason(self, calls: list[ToolCall] | None) -> str | None:
        if self.finish_reason is None:
            return None
        return finish_reason(self.work.request.body.tool_choice, calls, self.finish_reason)

    def completion(self, worker: str, now: float) -> Completion:
        """The finished answer; its logprobs reach the app only when it asked for them."""
        usage = self.usage()
        body, text = self.work.request.body, "".join(self.text)
        calls = body.calls_in(text)
        finish = self._reason(calls)
        choice = Choice(
            message=AnswerMessage(role="assistant", content=text, tool_calls=calls),
            finish_reason=finish,
            logprobs=ChoiceLogprobs(content=self.logprobs)
            if self.work.request.body.logprobs
            else None,
        )
        response = ChatCompletion(
            id=f"chatcmpl-{self.work.request.correlation_id}",
            created=int(now),
            model=self.work.model,
            choices=[choice],
            usage=usage,
        )
        return Completion(
            work=self.work,
            response=response,
            timings=self.timings(now),
            mean_logprob=self.mean_logprob,
            worker=worker,
            finished_at=now,
        )

    def failure(self, error: LlmqError, worker: str, now: float) -> Completion:
        """The request ends in an error reply."""
        return Completion(
            work=self.work,
            error=ErrorInfo.from_error(error),
            engine_retried=error.retried,
            timings=self.timings(now),
            worker=worker,
            finished_at=now,
        )

    def metering(
        self, spec: ModelSpec, worker: str, now: float, outcome: str = "ok"
    ) -> MeteringEvent:
        """What this generation consumed and cost (`outcome`: ok, or how it was cut short)."""
        timings = self.timings(now)
        request = self.work.request
        return MeteringEvent(
            correlation_id=request.correlation_id,
            tenant=request.tenant,
            model=spec.name,
            lane=request.lane,
            fingerprint=self.work.fingerprint,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            prompt_tokens_saved=self.prompt_tokens_saved,
            cost_usd=spec.cost(self.prompt_tokens, self.completion_tokens),
            queue_ms=timings.queue_ms or 0.0,
            ttft_ms=timings.ttft_ms,
            engine_ms=timings.engine_ms or 0.0,
            worker=worker,
            outcome=outcome,
            experiment=self.work.route.experiment,
            arm=self.work.route.arm,
            at=now,
        )
