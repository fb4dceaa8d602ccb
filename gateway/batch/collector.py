"""Reads the batch lines' replies (llmq.batch-results) into their batches' output and error
files. The front doors share the topic's partitions in one consumer group, and offsets are
committed once the outcomes are in Redis: a reply read twice is written once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic import ValidationError
from redis.exceptions import RedisError

from gateway.batch.lines import (
    ENDPOINT,
    ENDPOINTS,
    RESPONSES_ENDPOINT,
    failed_line,
    output_line,
)
from gateway.batch.store import BatchStore, Outcome
from llmq.throttle import apart
from schemas.errors import ErrorCode
from schemas.names import BATCH_RESULTS, BATCHES_GROUP
from schemas.redact import explain
from schemas.result import ErrorInfo, InferenceResult
from schemas.settings import ServiceSettings

log = logging.getLogger(__name__)

Replies = dict[tuple[str, str], list[tuple[int, int, InferenceResult]]]
"""(batch id, tenant) -> (line, attempt, reply)."""
WAITS = frozenset({ErrorCode.RATE_LIMITED, ErrorCode.BUDGET_EXCEEDED, ErrorCode.BUDGET_UNAVAILABLE})
"""Refusals for a while: a line waits them out as long as its batch has the time."""
MAX_LINE_ATTEMPTS = 16
"""A line's sends (its rate-limit waits among them, which the line's attempt counts too)
past which an engine failure that says when to try again (an open circuit, a remote
server's Retry-After) is the line's, rather than the line sent every cooldown until its
batch expires."""
MAX_FOREIGN = 1024
"""Batches of an endpoint this door does not know that a collector remembers having logged;
past this many it forgets them (each may be logged once more)."""


def parse_line_id(correlation_id: str) -> tuple[str, int, int] | None:
    """(batch id, line, attempt) of a line's correlation_id; None for any other id."""
    batch_id, _, rest = correlation_id.partition(".")
    number, _, attempt = rest.partition(".")
    if not batch_id.startswith("batch_") or not number.isdigit() or not attempt.isdigit():
        return None
    return batch_id, int(number), int(attempt)


def outcome(
    number: int,
    attempt: int,
    custom_id: str,
    result: InferenceResult,
    expires_at: float,
    *,
    endpoint: str = ENDPOINT,
    asked: dict[str, Any] | None = None,
) -> Outcome:
    """What a reply makes of its line: an output line (in the shape of the batch's
    `endpoint`; a response echoes what its line `asked`), an error line, or (refused for a
    while: rate limits, budget holds) a retry once the wait is over, if that is before the
    batch expires; engine failures that say when to try again, up to MAX_LINE_ATTEMPTS. A
    reply with neither an answer nor an error (another producer's) is an error line: it
    must not stop the collector, which would read it again and again."""
    error = result.error
    if error is None and result.response is None:  # no door's reply: the line says so
        return _failed(
            number, attempt, custom_id, result, "it carried neither an answer nor an error"
        )
    if (
        error is not None
        and error.retry_after_s is not None
        and (error.code in WAITS or attempt + 1 < MAX_LINE_ATTEMPTS)
    ):
        retry_at = time.time() + error.retry_after_s
        if retry_at < expires_at:
            return Outcome(number, attempt, "retry", {}, retry_at=retry_at)
    usage = None if result.response is None else result.response.usage
    tokens = (0, 0, 0)
    if usage is not None:
        details = usage.prompt_tokens_details
        cached = 0 if details is None else details.cached_tokens
        tokens = (usage.prompt_tokens, usage.completion_tokens, cached)
    kind = "output" if error is None else "error"
    line = output_line(custom_id, result, endpoint, asked)
    return Outcome(number, attempt, kind, line, tokens)


def _guarded(
    number: int,
    attempt: int,
    custom_id: str,
    result: InferenceResult,
    expires_at: float,
    *,
    endpoint: str,
    asked: dict[str, Any] | None,
) -> Outcome:
    """outcome(), or, if making it fails (a bug), an error line saying so: a reply that
    fails every time would otherwise stop every later one, read again after each failure."""
    try:
        return outcome(
            number, attempt, custom_id, result, expires_at, endpoint=endpoint, asked=asked
        )
    except Exception as exc:
        log.exception("cannot write the reply %s", result.correlation_id)
        return _failed(number, attempt, custom_id, result, explain(exc))


def _failed(
    number: int, attempt: int, custom_id: str, result: InferenceResult, why: str
) -> Outcome:
    """An internal_error line for a reply that cannot be written as it is, saying `why`."""
    message = f"the line's reply could not be written: {why}"
    line = failed_line(custom_id, str(result.correlation_id), ErrorCode.INTERNAL_ERROR, message)
    return Outcome(number, attempt, "error", line)


def _unreadable(value: bytes | None, exc: ValidationError) -> InferenceResult | None:
    """An error reply standing for a line's reply that does not validate (a newer llmq's,
    during an upgrade: a field this one does not know), read leniently for its line's
    correlation_id and tenant: skipped, its line would wait until its batch expires. None,
    with a warning, for a record that names no line (not JSON, another producer's)."""
    try:
        data = json.loads(value or b"")
    except (ValueError, RecursionError):  # RecursionError: nested past json's depth
        data = None
    fields = data if isinstance(data, dict) else {}
    correlation_id, tenant = fields.get("correlation_id"), fields.get("tenant")
    why = explain(exc)
    if not isinstance(correlation_id, str) or not isinstance(tenant, str):
        log.warning("skipped a record of %s that is no line's reply: %s", BATCH_RESULTS, why)
        return None
    if parse_line_id(correlation_id) is None:
        log.warning("skipped a reply that is no batch line's (%.80r): %s", correlation_id, why)
        return None
    log.warning("the reply %s could not be read: %s", correlation_id, why)
    message = f"the line's reply could not be read (from a newer llmq?): {why}"
    error = ErrorInfo(code=ErrorCode.INTERNAL_ERROR, message=message, retriable=False)
    return InferenceResult(
        correlation_id=correlation_id, tenant=tenant, status="error", error=error
    )


class Collector:
    """One front door's reader of batch replies."""

    def __init__(self, settings: ServiceSettings, store: BatchStore, client_id: str) -> None:
        self._settings = settings
        self._store = store
        self._client_id = f"{client_id}-batches"
        self._consumer: AIOKafkaConsumer | None = None
        self._foreign: set[str] = set()
        """Batches of an endpoint this door does not know, logged (see _resend)."""

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            BATCH_RESULTS,
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=self._client_id,
            group_id=BATCHES_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self._settings.kafka_security().client_kwargs(),
        )
        await self._consumer.start()

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()

    async def run(self) -> None:
        """Until cancelled: read, write the outcomes, commit. A failure re-reads from the
        last commit after a pause."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("the collector is not started")
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=500)
                records = [r for rs in batches.values() for r in rs]
                if records:
                    await self.take([r.value for r in records])
                    await consumer.commit()
            except (KafkaError, RedisError) as exc:
                log.warning("batch replies wait: %s", explain(exc))
                await asyncio.sleep(1.0)
                await self._rewind(consumer)
            except Exception:  # a bug must not stop the batches: read again from the commit
                log.exception("writing batch replies failed; reading them again")
                await asyncio.sleep(1.0)
                await self._rewind(consumer)

    @staticmethod
    async def _rewind(consumer: AIOKafkaConsumer) -> None:
        """Back to the last commit: nothing read since is written yet."""
        with contextlib.suppress(KafkaError):
            for tp in consumer.assignment():
                committed = await consumer.committed(tp)
                if committed is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, committed)

    async def take(self, values: list[bytes | None]) -> None:
        """Write the outcome of each reply that is a batch line's; one that cannot be read
        is an error line (_unreadable). A batch of an endpoint this door does not know has
        its lines sent again instead (_resend)."""
        replies: Replies = defaultdict(list)
        for value in values:
            try:
                result = InferenceResult.model_validate_json(value or b"")
            except ValidationError as exc:
                unread = _unreadable(value, exc)
                if unread is None:
                    continue
                result = unread
            parsed = None if result.correlation_id is None else parse_line_id(result.correlation_id)
            if parsed is not None and result.tenant is not None:
                batch_id, number, attempt = parsed
                replies[(batch_id, result.tenant)].append((number, attempt, result))
        for (batch_id, tenant), lines in replies.items():
            batch = await self._store.batch(batch_id, tenant)
            if batch is None:
                continue  # gone (retention), or not this tenant's
            expires_at, endpoint = float(batch["expires_at"]), batch["endpoint"]
            if endpoint not in ENDPOINTS:
                await self._resend(batch_id, tenant, endpoint, lines)
                continue
            numbers = [n for n, _, _ in lines]
            custom_ids = await self._store.custom_ids(batch_id, numbers)
            echoed = endpoint == RESPONSES_ENDPOINT
            asked = await self._store.asked(batch_id, numbers) if echoed else [None] * len(lines)
            outcomes = [
                _guarded(
                    number, attempt, custom_id, result, expires_at, endpoint=endpoint, asked=echo
                )
                for (number, attempt, result), custom_id, echo in zip(
                    lines, custom_ids, asked, strict=True
                )
                if custom_id is not None
            ]
            await self._store.record(batch_id, tenant, outcomes)

    async def _resend(
        self,
        batch_id: str,
        tenant: str,
        endpoint: str,
        lines: list[tuple[int, int, InferenceResult]],
    ) -> None:
        """Send these lines of a batch whose endpoint this door does not know (a newer
        door's, in a rollout) again, now, their replies unwritten: this door would write an
        answer in another endpoint's shape. The collectors share the replies, so a reply
        left unwritten is lost; the next one, keyed by the next attempt's correlation id, may
        reach another partition, read by a door that knows the endpoint. The batch's window
        (runner._Window) bounds the lines run again while doors like this one read replies."""
        if batch_id not in self._foreign:
            if len(self._foreign) >= MAX_FOREIGN:
                self._foreign.clear()
            self._foreign.add(batch_id)
            log.warning(
                "batch %s calls %s, which this front door does not know: its lines whose"
                " replies this door reads are sent again, for a newer door to write",
                batch_id,
                endpoint,
                extra=apart(batch_id),
            )
        now = time.time()
        retries = [Outcome(n, attempt, "retry", {}, retry_at=now) for n, attempt, _ in lines]
        await self._store.record(batch_id, tenant, retries)
