"""Streamed answers: a generation's steps, a few tokens per record, onto llmq.tokens."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from schemas.names import TOKENS
from schemas.redact import explain
from schemas.result import TokenLogprob, Usage
from schemas.stream import TokenDelta
from schemas.work import WorkItem
from workers.claims import Claim
from workers.engine import EngineStep

log = logging.getLogger(__name__)

Send = Callable[[str, bytes, bytes], Awaitable[Awaitable[object]]]
"""aiokafka's producer.send(topic, value, key): awaited once to queue the record, and the
future it returns once more for the broker's acknowledgement."""


@dataclass(frozen=True)
class DeltaPolicy:
    """How often a streamed generation publishes what it has."""

    interval_s: float = 0.04
    """At most this long between two records while tokens come."""
    max_tokens: int = 16
    """At most this many tokens in one record."""


class DeltaStream:
    """Collects one generation's steps and publishes them as TokenDelta records: the first
    token at once (time to first token), then every interval or so many tokens
    (DeltaPolicy), so a stream costs a few records a second, not one per token. Every record
    but the last adds text (tokens whose text is held back go with the next that has some),
    so the characters sent, which a client counts to resume a stream, grow with each record.

    Deltas are a preview: the final result stays the truth, so a record it cannot build or
    the broker does not take is logged and the generation goes on.
    """

    def __init__(
        self,
        send: Send,
        work: WorkItem,
        generation: str,
        policy: DeltaPolicy,
        claim: Claim | None = None,
    ) -> None:
        """`claim`, for a speculative request: asked once, before the first record; when it
        says no (the cache claimed the request, or the claim is uncertain), the stream
        publishes nothing and the final result carries the answer."""
        self._send = send
        self._claim = claim
        self._open = True
        self._request = work.request
        self._model = work.model
        self._generation = generation
        self._policy = policy
        self._seq = 0
        self._text: list[str] = []
        self._tokens = 0
        self._logprobs: list[TokenLogprob] | None = [] if work.request.body.logprobs else None
        self._flushed_at = 0.0
        self._acks: list[Awaitable[object]] = []

    @property
    def published(self) -> bool:
        """Whether a record of this generation was sent: its client may have shown it, so
        no other generation may answer in its place unless it would say the same."""
        return self._seq > 0

    async def add(self, step: EngineStep) -> None:
        """Take one step; publish what has gathered when it is time."""
        if not self._open:
            return  # refused by its claim: nothing is kept, as nothing will be sent
        self._text.append(step.text)
        self._tokens += step.new_tokens
        if self._logprobs is not None:
            self._logprobs.extend(step.logprobs)
        now = time.monotonic()
        first = self._seq == 0 and self._tokens > 0
        due = now - self._flushed_at >= self._policy.interval_s
        if first or due or self._tokens >= self._policy.max_tokens:
            await self._flush(now)

    async def finish(self, finish_reason: str | None, usage: Usage, wait_s: float = 10.0) -> None:
        """Publish the rest with the finish reason and usage, and wait (a bounded time) for
        the broker to take every record of the stream."""
        await self._flush(time.monotonic(), finish_reason or "stop", usage)
        try:
            async with asyncio.timeout(wait_s):
                for ack in self._acks:
                    await ack
        except Exception as exc:  # a preview only: the final result carries the answer
            log.warning("token deltas of %s not all published: %r", self._generation, exc)

    async def _flush(
        self, now: float, finish_reason: str | None = None, usage: Usage | None = None
    ) -> None:
        text = "".join(self._text)
        if not text and finish_reason is None:
            return  # the detokenizer holds these tokens' text back: they wait for it
        if self._claim is not None:
            claim, self._claim = self._claim, None
            self._open = await claim(self._request.tenant, self._request.correlation_id)
        if not self._open:
            return
        seq, tokens, logprobs = self._seq, self._tokens, self._logprobs
        self._seq += 1
        self._text, self._tokens, self._flushed_at = [], 0, now
        if self._logprobs is not None:
            self._logprobs = []
        key = self._request.correlation_id.encode()
        try:  # a delta it cannot build (a count it refuses) is lost as one the broker refuses
            delta = TokenDelta(
                correlation_id=self._request.correlation_id,
                tenant=self._request.tenant,
                generation=self._generation,
                seq=seq,
                text=text,
                tokens=tokens,
                logprobs=logprobs,
                finish_reason=finish_reason,
                usage=usage,
                model=self._model,
            )
            self._acks.append(await self._send(TOKENS, delta.model_dump_json().encode(), key))
        except Exception as exc:
            log.warning("a token delta of %s was not queued: %s", self._generation, explain(exc))
