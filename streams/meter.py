"""Stage beside the others, llmq.metering: each event counts towards its tenant's budget and
into the hourly cost rollups, once however often it is delivered."""

from __future__ import annotations

import asyncio
import itertools
import logging

from pydantic import ValidationError
from redis.exceptions import RedisError

from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import METERING
from schemas.redact import describe, explain
from schemas.retry import RetryPolicy
from streams.gate import TenantGate
from streams.outbox import Outbox
from streams.resend import until_taken
from streams.rollups import CostRollups

log = logging.getLogger(__name__)

METERING_RETRY = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0)
"""Backoff between tries to count a metering event while Redis fails (tried until it works)."""


class Meter:
    """Counts llmq.metering: the budget, then the rollups; an unreadable event goes to the
    dead letters."""

    def __init__(self, gate: TenantGate, rollups: CostRollups, outbox: Outbox) -> None:
        self._gate = gate
        self._rollups = rollups
        self._outbox = outbox

    async def on_metering(self, key: bytes | None, value: bytes | None) -> None:
        """One record of llmq.metering. Redis errors are retried (with a capped backoff)
        until they pass: the record's offset is committed only after it, so nothing is lost,
        and nothing counted twice (both counts skip an event they have counted)."""
        try:
            event = MeteringEvent.model_validate_json(value or b"")
        except ValidationError as exc:
            why = LlmqError(
                ErrorCode.INVALID_REQUEST, f"unreadable metering event: {describe(exc)}"
            )
            await self._dead_letter(key, value, why)
            return
        for attempt in itertools.count(1):
            try:
                await self._gate.count(event)
                await self._rollups.add(event)
                return
            except RedisError as exc:
                delay = METERING_RETRY.backoff(attempt)
                log.warning("cannot count a metering event (retrying in %.1fs): %s", delay, exc)
                await asyncio.sleep(delay)

    async def _dead_letter(self, key: bytes | None, value: bytes | None, why: LlmqError) -> None:
        """The record to llmq.dlq, tried again while Kafka is away (as the Guard does); one
        that cannot go is logged, not raised: faust would commit past a raising agent."""
        log.warning("dead-lettering a metering event: %s", why.message)
        try:
            await until_taken(
                lambda: self._outbox.dead_letter(METERING, key, value, why),
                "a dead letter of llmq.metering",
            )
        except Exception as exc:
            log.error("an unreadable metering event was lost (%s): %s", why.message, explain(exc))
