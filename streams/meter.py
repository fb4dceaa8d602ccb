"""Stage beside the others, llmq.metering: each event counts towards its tenant's budget and
into the hourly cost rollups, once however often it is delivered."""

from __future__ import annotations

import asyncio
import itertools
import logging

from pydantic import ValidationError
from redis.exceptions import RedisError

from schemas.metering import MeteringEvent
from schemas.redact import describe
from schemas.retry import RetryPolicy
from streams.gate import TenantGate
from streams.rollups import CostRollups

log = logging.getLogger(__name__)

METERING_RETRY = RetryPolicy(base_delay_s=0.1, max_delay_s=5.0)
"""Backoff between tries to count a metering event while Redis fails (tried until it works)."""


class Meter:
    """Counts llmq.metering: the budget, then the rollups."""

    def __init__(self, gate: TenantGate, rollups: CostRollups) -> None:
        self._gate = gate
        self._rollups = rollups

    async def on_metering(self, value: bytes | None) -> None:
        """One record of llmq.metering. Redis errors are retried (with a capped backoff)
        until they pass: the record's offset is committed only after it, so nothing is lost,
        and nothing counted twice (both counts skip an event they have counted)."""
        try:
            event = MeteringEvent.model_validate_json(value or b"")
        except ValidationError as exc:
            log.warning("skipping an unreadable metering event: %s", describe(exc))
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
