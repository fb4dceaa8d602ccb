"""Sending what a generation ends with: its completion on llmq.completions and, for tokens
paid for, its metering event on llmq.metering, each until the broker takes it (the work
record's offset waits on both), a record dead-lettered to llmq.dlq, and the failure that
answers a work record this worker cannot read (Publisher.unreadable). An outcome too large
to carry is replaced by the error that says so (without its prompt where the request alone is
too large); a record Kafka refuses all the same stops the worker (UnsendableRecordError), since
resending it would fail for good."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from llmq.record_limits import RECORD_LIMIT, dead_letter_within, record_size
from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import COMPLETIONS, DLQ, METERING
from schemas.request import IDENTIFIER, MAX_RECORD_BYTES
from schemas.result import ErrorInfo, Timings
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
_FAILURE_ROOM = 2_048
"""Bytes a failure's record adds to its work item's: the error, timings and metering (about
1,100 with a 300-character message)."""
_KEPT_WHEN_TOO_LARGE = frozenset({ErrorCode.SUPERSEDED, ErrorCode.ANSWER_TOO_LARGE})
"""Outcomes that stay as they are when too large, losing only their prompt: one answers
nobody, the other already says why."""
PUBLISH_RETRY = RetryPolicy(base_delay_s=0.5, max_delay_s=5.0)
"""Backoff between tries to publish an outcome the broker did not take (tried until it does)."""


class UnsendableRecordError(Exception):
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
        else:
            then += f": raise {topic}'s max.message.bytes"
        super().__init__(f"{why}; {then}")


class Publisher:
    """Sends one worker's outcomes with its producer, each record until the broker takes it."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        spec: ModelSpec,
        worker_id: str,
        record_limit: int = RECORD_LIMIT,
        dead_letter_limit: int = RECORD_LIMIT,
    ) -> None:
        self._producer = producer
        self._spec = spec
        self._worker_id = worker_id
        self._limit = record_limit
        """The most bytes the producer sends as one record (its max_request_size)."""
        self._dead_letter_limit = min(record_limit, dead_letter_limit)
        """The most bytes of a dead letter: what the producer sends and llmq.dlq takes."""

    async def publish(self, completion: Completion, state: InFlight) -> None:
        """Send the completion (and, for a generation, its metering event, which also rides in
        the completion for the tenant's budget); await both acks. An outcome too large for a
        record is replaced by the error that says so: sending it would fail every time."""
        key = completion.work.fingerprint.encode()
        event, value = self._record(completion, state)
        if not self._fits(key, value) and completion.error is None and completion.work.unsure:
            # An escalation's answer needs no stand-in: the unsure answer it carries goes.
            completion = _without_unsure(completion)
            event, value = self._record(completion, state)
        if not self._fits(key, value):
            event, value = self._too_large(completion, state, key, value)
        sends = [self._deliver(COMPLETIONS, key, value)]
        if event is not None:
            metered = event.model_dump_json().encode()
            sends.append(self._deliver(METERING, event.tenant.encode(), metered))
        await asyncio.gather(*sends)

    async def dead_letter(self, record: ConsumerRecord[bytes, bytes], error: LlmqError) -> None:
        """Send the record, as it came, to llmq.dlq with the error that put it there, until
        the broker takes it; cut to what the producer sends and llmq.dlq takes, as the
        admission limit cuts it."""
        log.warning(
            "dead-lettering %s/%d@%d: %s", record.topic, record.partition, record.offset, error
        )
        letter = dead_letter_within(
            record.topic, record.key, record.value, error, self._dead_letter_limit
        )
        await self._deliver(DLQ, letter.key, letter.value, list(letter.headers.items()))

    async def unreadable(self, record: ConsumerRecord[bytes, bytes], error: LlmqError) -> None:
        """Answer a work record this worker cannot read (written by a newer llmq) where its
        request's correlation_id can be read: a failure carrying the work as it came, which
        the stream processor that wrote it reads, to answer its request and copies and
        release its hold. Its retries keep its fingerprint, so its partition and, unless a
        rebalance moves that, this worker: they fail the same within the seconds they take
        (a worker rollout takes minutes), and its request ends with this error. Not metered:
        nothing was generated. One too large to send is left to its dead letter."""
        work = _unread_work(record.value)
        if work is None:
            return
        failure = {  # a Completion's fields, its others left to their defaults
            "work": work,
            "error": ErrorInfo.from_error(error).model_dump(mode="json"),
            "engine_retried": error.retried,
            "timings": Timings().model_dump(mode="json"),  # no stage of it ran here
            "worker": self._worker_id,
            "finished_at": time.time(),
        }
        value = json.dumps(failure).encode()
        if not self._fits(record.key or b"", value):
            log.warning("cannot answer %s: %s", work["request"]["correlation_id"], self._past_kafka)
            return
        await self._deliver(COMPLETIONS, record.key, value)

    def _fits(self, key: bytes, value: bytes) -> bool:
        """Whether llmq sends this completion record and the producer takes it (its own
        check, which a topic's lower max.message.bytes, read at the start, brings down)."""
        return len(value) <= MAX_COMPLETION_BYTES and record_size(key, value) <= self._limit

    def uncarried(self, state: InFlight) -> LlmqError | None:
        """Why no outcome of this work can be sent back (its request alone is past what the
        producer sends, with the room a failure adds), so that it is not generated for
        nothing; None where one can."""
        if self._limit >= MAX_RECORD_BYTES + _FAILURE_ROOM:
            return None  # every request admission takes fits
        key = state.work.fingerprint.encode()
        carried = state.work.model_copy(update={"unsure": None})  # the stand-in may go
        size = record_size(key, carried.model_dump_json().encode()) + _FAILURE_ROOM
        if size <= self._limit:
            return None
        return LlmqError(
            ErrorCode.ANSWER_TOO_LARGE,
            f"its request makes any outcome's record at least {size} bytes, {self._past_kafka}: "
            "it was not generated; send a shorter prompt",
        )

    @property
    def _past_kafka(self) -> str:
        return f"more than Kafka takes on {COMPLETIONS} (its max.message.bytes, {self._limit})"

    def _too_large(
        self, completion: Completion, state: InFlight, key: bytes, value: bytes
    ) -> tuple[MeteringEvent | None, bytes]:
        """The record (and its event, under the outcome's own label) that replaces an outcome
        whose record `value` is too large: the error that says so. Where the request is
        itself too large, the failure carries it back without its prompt, which nothing
        reads of a failure that is not retried (kept, it would stop the worker at every
        start); a superseded outcome (it answers nobody) or one already answer_too_large
        only loses its prompt. UnsendableRecordError where even that does not fit."""
        if len(value) > MAX_COMPLETION_BYTES and self._limit >= MAX_COMPLETION_BYTES:
            size, why = len(value), f"past the {MAX_COMPLETION_BYTES} llmq sends"
        else:  # the topic's lower limit is the one it passes
            size, why = record_size(key, value), self._past_kafka
        error = completion.error
        outcome = ErrorCode.ANSWER_TOO_LARGE.value if error is None else error.code.value
        tries: list[tuple[Completion, bool]] = []
        if error is not None and error.code in _KEPT_WHEN_TOO_LARGE:
            tries.append((_promptless(completion), True))
        else:
            what = "answer's record" if error is None else f"record of its {error.code} failure"
            said = f"the {what} is {size} bytes, {why}"
            if error is None:
                advice = "ask for fewer max_tokens or top_logprobs"
                tries.append((self._failure(state, completion, f"{said}; {advice}"), False))
            alone = "its request alone does not fit: send a shorter prompt"
            failure = self._failure(state, completion, f"{said}; {alone}")
            tries.append((_promptless(failure), True))
        if state.work.unsure is not None:  # last, the stand-in answer an escalation carries
            tries.append((_without_unsure(tries[-1][0]), tries[-1][1]))
        for replacement, promptless in tries:
            event, value = self._record(replacement, state, outcome)
            if self._fits(key, value):
                log.warning(
                    "answering %s with %s%s",
                    completion.work.request.correlation_id,
                    replacement.error,
                    " (its request carried back without the prompt)" if promptless else "",
                )
                return event, value
        raise UnsendableRecordError(COMPLETIONS, len(value), by_broker=False)

    def _failure(self, state: InFlight, completion: Completion, message: str) -> Completion:
        """The answer_too_large failure that replaces `completion`."""
        error = LlmqError(ErrorCode.ANSWER_TOO_LARGE, message)
        return state.failure(error, self._worker_id, completion.finished_at)

    def _record(
        self, completion: Completion, state: InFlight, outcome: str | None = None
    ) -> tuple[MeteringEvent | None, bytes]:
        """The completion's metering event, if its tokens are paid for (an answer, or a
        failure that spent them; `outcome` labels them where not the completion's own), and
        its record, which carries that event."""
        if outcome is None:
            outcome = "ok" if completion.error is None else completion.error.code.value
        if completion.response is None and not (outcome in _METERED_FAILURES and state.spent):
            return None, completion.model_dump_json().encode()
        event = state.metering(self._spec, self._worker_id, completion.finished_at, outcome=outcome)
        return event, completion.model_copy(update={"metering": event}).model_dump_json().encode()

    async def _deliver(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Send one record until the broker acknowledges it: while Kafka is away the outcome
        waits here and its offset stays uncommitted, so nothing is lost or sent twice. One
        that Kafka refuses for its size (the broker's limit lowered since the start) raises
        UnsendableRecordError."""
        for attempt in itertools.count(1):
            sent = False
            try:
                ack = await self._producer.send(topic, value, key, headers=headers)
                sent = True
                await ack
                return
            except MessageSizeTooLargeError as exc:
                raise UnsendableRecordError(topic, len(value), sent) from exc
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


def _unread_work(raw: bytes | None) -> dict[str, Any] | None:
    """A work record's JSON object, where its request names a sane correlation_id (it is
    echoed back and logged); None otherwise."""
    try:
        work = json.loads(raw or b"")
    except (ValueError, RecursionError):
        return None
    request = work.get("request") if isinstance(work, dict) else None
    cid = request.get("correlation_id") if isinstance(request, dict) else None
    return work if isinstance(cid, str) and IDENTIFIER.fullmatch(cid) else None


def _without_unsure(completion: Completion) -> Completion:
    """The completion, its work without the unsure answer an escalation carries."""
    return completion.model_copy(
        update={"work": completion.work.model_copy(update={"unsure": None})}
    )


def _promptless(completion: Completion) -> Completion:
    """The completion, its request carried back without the prompt (WorkItem.promptless)."""
    return completion.model_copy(update={"work": completion.work.promptless()})
