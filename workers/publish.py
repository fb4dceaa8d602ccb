"""Sending what a generation ends with: its completion on llmq.completions and, for tokens
paid for, its metering event on llmq.metering, each until the broker takes it (the work
record's offset waits on both), and a record dead-lettered to llmq.dlq. An answer too large
to carry is replaced by the error that says so; a record Kafka will not take at all stops the
worker (RecordRefusedError), since resending it would fail for good."""

from __future__ import annotations

import asyncio
import itertools
import logging

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from schemas.catalog import ModelSpec
from schemas.dlq import dead_letter
from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import COMPLETIONS, DLQ, METERING
from schemas.retry import RetryPolicy
from schemas.work import MAX_COMPLETION_BYTES, Completion
from workers.inflight import InFlight

log = logging.getLogger(__name__)

_METERED_FAILURES = frozenset(
    {
        ErrorCode.CANCELLED.value,
        ErrorCode.SUPERSEDED.value,
        ErrorCode.EXPIRED.value,
        ErrorCode.ANSWER_TOO_LARGE.value,
    }
)
"""Failures metered all the same: the generation was cut short (or its answer too large to
send), its tokens were spent."""
PUBLISH_RETRY = RetryPolicy(base_delay_s=0.5, max_delay_s=5.0)
"""Backoff between tries to publish an outcome the broker did not take (tried until it does)."""


class RecordRefusedError(Exception):
    """A record Kafka will not take on its topic however often it is sent: the worker stops,
    leaving it uncommitted for its next start."""

    def __init__(self, topic: str, size: int, by_broker: bool) -> None:
        why = f"a {size}-byte record is more than Kafka takes on {topic}"
        then = "the worker stops, leaving the record to its next start"
        if by_broker:  # the producer's sequence on that partition is broken from now on
            why = (
                f"Kafka refused a {size}-byte record on {topic}: its max.message.bytes is "
                "lower than when this worker started, and a producer the broker refused "
                "cannot write that partition again"
            )
            then += ", which reads the new limit"
        super().__init__(f"{why}; {then}")


class Publisher:
    """Sends one worker's outcomes with its producer, each record until the broker takes it."""

    def __init__(self, producer: AIOKafkaProducer, spec: ModelSpec, worker_id: str) -> None:
        self._producer = producer
        self._spec = spec
        self._worker_id = worker_id

    async def publish(self, completion: Completion, state: InFlight) -> None:
        """Send the completion (and, for a generation, its metering event, which also rides in
        the completion for the tenant's budget); await both acks. An answer too large for a
        record is replaced by the error that says so: sending it would fail every time."""
        event, value = self._record(completion, state)
        if len(value) > MAX_COMPLETION_BYTES:
            event, value = self._too_large(
                completion, state, len(value), f"past the {MAX_COMPLETION_BYTES} llmq sends"
            )
        sends = [self._answer(completion, state, value)]
        if event is not None:
            metered = event.model_dump_json().encode()
            sends.append(self._deliver(METERING, event.tenant.encode(), metered))
        await asyncio.gather(*sends)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: LlmqError) -> None:
        """Send the record, as it came, to llmq.dlq with the error that put it there."""
        log.warning(
            "dead-lettering %s/%d@%d: %s", record.topic, record.partition, record.offset, error
        )
        letter = dead_letter(record.topic, record.key, record.value, error)
        headers = list(letter.headers.items())
        await (await self._producer.send(DLQ, letter.value, letter.key, headers=headers))

    async def _answer(self, completion: Completion, state: InFlight, value: bytes) -> None:
        """Send the completion's record. One past the topic's limit (read at the start, when
        lower than the bound) is replaced by the error that says so; its metering event, the
        same event, is already on its way."""
        key = completion.work.fingerprint.encode()
        try:
            await self._deliver(COMPLETIONS, key, value, refusable=True)
        except MessageSizeTooLargeError:
            why = f"more than Kafka takes on {COMPLETIONS} (its max.message.bytes)"
            _, failure = self._too_large(completion, state, len(value), why)
            await self._deliver(COMPLETIONS, key, failure)

    def _too_large(
        self, completion: Completion, state: InFlight, size: int, why: str
    ) -> tuple[MeteringEvent | None, bytes]:
        """The record of the error that replaces an answer of `size` bytes, and its event."""
        error = LlmqError(
            ErrorCode.ANSWER_TOO_LARGE,
            f"the answer's record is {size} bytes, {why}; ask for fewer max_tokens or top_logprobs",
        )
        log.warning("answering %s with %s", completion.work.request.correlation_id, error)
        return self._record(state.failure(error, self._worker_id, completion.finished_at), state)

    def _record(
        self, completion: Completion, state: InFlight
    ) -> tuple[MeteringEvent | None, bytes]:
        """The completion's metering event, if its tokens are paid for (an answer, or a
        failure that spent them), and its record, which carries that event."""
        outcome = "ok" if completion.error is None else completion.error.code.value
        if completion.response is None and not (outcome in _METERED_FAILURES and state.spent):
            return None, completion.model_dump_json().encode()
        event = state.metering(self._spec, self._worker_id, completion.finished_at, outcome=outcome)
        return event, completion.model_copy(update={"metering": event}).model_dump_json().encode()

    async def _deliver(self, topic: str, key: bytes, value: bytes, refusable: bool = False) -> None:
        """Send one record until the broker acknowledges it: while Kafka is away the outcome
        waits here and its offset stays uncommitted, so nothing is lost or sent twice. A
        `refusable` record past the topic's limit raises MessageSizeTooLargeError; any other,
        or one the broker refuses itself (the limit lowered since the start), RecordRefusedError."""
        for attempt in itertools.count(1):
            sent = False
            try:
                ack = await self._producer.send(topic, value, key)
                sent = True
                await ack
                return
            except MessageSizeTooLargeError as exc:
                if refusable and not sent:
                    raise
                raise RecordRefusedError(topic, len(value), sent) from exc
            except KafkaError as exc:
                delay = PUBLISH_RETRY.backoff(attempt)
                log.warning(
                    "sending to %s failed (attempt %d), again in %.1fs: %r",
                    topic,
                    attempt,
                    delay,
                    exc,
                )
                await asyncio.sleep(delay)
