"""In-memory fakes of the worker's consumer, producer, start counts and engine, and a
harness that runs a Worker on them while a scenario drives it (or serves one record).

The fakes keep only what the loop relies on (aiokafka's pause, max_records, commit,
committed and position; an engine that streams steps and notices being closed);
tests/integration runs the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.util import commit_structure_validate

from llmq.record_limits import RECORD_LIMIT
from schemas.catalog import ModelSpec
from schemas.errors import LlmqError
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import COMPLETIONS, METERING, TOKENS, work_topic
from schemas.request import DEFAULT_TENANT, ChatBody, ChatMessage, InferenceRequest
from schemas.result import TokenLogprob
from schemas.route import Route
from schemas.stream import TokenDelta
from schemas.tools import Tool
from schemas.work import Completion, WorkItem
from workers.cancels import Cancellations
from workers.claims import Claim
from workers.engine import Engine, EngineStep
from workers.lanes import LanePolicy
from workers.tokens import DeltaPolicy
from workers.worker import Worker

MODEL = "m"
PROMPT_TOKENS = 5
CACHED_TOKENS = 2
"""Of PROMPT_TOKENS, those the fake engine says it found in its prefix cache."""
INTERACTIVE = TopicPartition(work_topic(MODEL, Lane.INTERACTIVE), 0)
BATCH = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
STANDARD = TopicPartition(work_topic(MODEL, Lane.STANDARD), 0)


class Committed(dict[TopicPartition, int]):
    """The offsets committed, by partition; called, one partition's or None (aiokafka's
    `committed`)."""

    async def __call__(self, tp: TopicPartition) -> int | None:
        return self.get(tp)


class FakeConsumer:
    """Assigned partitions in memory; paused ones are not fetched; the earliest topic first."""

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.committed = Committed()
        self.metadata: dict[TopicPartition, str] = {}
        """The metadata of each partition's last commit."""
        self.rebalancing = False
        """While set, nothing is fetched (as aiokafka's fetcher waits for the assignment)."""

    def add(self, tp: TopicPartition, values: list[bytes]) -> None:
        log = self.logs.setdefault(tp, [])
        self.positions.setdefault(tp, 0)
        for value in values:
            log.append(
                ConsumerRecord(
                    tp.topic, tp.partition, len(log), 0, 0, None, value, None, 0, len(value), []
                )
            )

    def revoke(self, tp: TopicPartition) -> None:
        del self.logs[tp]

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        assert max_records > 0
        out = {}
        # Batch sorts first: the order least kind to lanes.
        for tp in [] if self.rebalancing else sorted(self.logs):
            if tp in self.paused or max_records <= 0:
                continue
            start = self.positions[tp]
            records = self.logs[tp][start : start + max_records]
            if records:
                out[tp] = records
                self.positions[tp] = start + len(records)
                max_records -= len(records)
        if not out:
            await asyncio.sleep(0.002)
        return out

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None:
        """Offsets, or offsets and metadata, read as aiokafka reads them (or refused)."""
        for tp, commit in commit_structure_validate(offsets).items():
            self.committed[tp] = commit.offset
            self.metadata[tp] = commit.metadata


class FakeProducer:
    """Acknowledges every send at once and keeps what was sent. A record past `limit` is
    refused as aiokafka's max_request_size does (MessageSizeTooLargeError from the send,
    reckoned as it reckons), or, `by_broker`, as a broker whose topics take fewer bytes than
    the producer sends does (in the ack)."""

    def __init__(self, limit: int = RECORD_LIMIT, by_broker: bool = False) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.refused: list[tuple[str, bytes]] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        """Each sent record's headers, in the order of `sent`."""
        self.limit = limit
        self.by_broker = by_broker

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers or [])
        if size > self.limit:
            self.refused.append((topic, value))
            if not self.by_broker:
                raise MessageSizeTooLargeError(f"The message is {size} bytes")
            ack.set_exception(MessageSizeTooLargeError())
            return ack
        self.sent.append((topic, value))
        self.headers.append(headers or [])
        ack.set_result(None)
        return ack

    @property
    def record_limit(self) -> int:
        """What the worker is told the producer sends: the limit itself, or for a broker
        that takes less, the producer's default."""
        return RECORD_LIMIT if self.by_broker else self.limit

    def completions(self) -> list[Completion]:
        return [Completion.model_validate_json(v) for t, v in self.sent if t == COMPLETIONS]

    def metering(self) -> list[MeteringEvent]:
        return [MeteringEvent.model_validate_json(v) for t, v in self.sent if t == METERING]

    def deltas(self) -> list[TokenDelta]:
        return [TokenDelta.model_validate_json(v) for t, v in self.sent if t == TOKENS]


class FlakyProducer(FakeProducer):
    """Refuses the first `failures` sends, as a broker that is restarting does."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        if self.failures > 0:
            self.failures -= 1
            raise KafkaConnectionError("broker away")
        return await super().send(topic, value, key, headers)


class MemoryStarts:
    """Start counts in a dict, as RedisStarts keeps them in Redis."""

    def __init__(
        self,
        counts: dict[tuple[str, int, int], int] | None = None,
        answers: dict[tuple[str, int, int], str] | None = None,
    ) -> None:
        self.counts = dict(counts or {})
        self.answers = dict(answers or {})

    async def answered(self, topic: str, partition: int, offset: int, correlation_id: str) -> bool:
        return self.answers.get((topic, partition, offset)) == correlation_id

    async def count(self, topic: str, partition: int, offset: int) -> int:
        return self.counts.get((topic, partition, offset), 0)

    async def begin(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition, offset)
        self.counts[key] = self.counts.get(key, 0) + 1

    async def end(self, topic: str, partition: int, offset: int, correlation_id: str) -> None:
        self.counts.pop((topic, partition, offset), None)
        self.answers[(topic, partition, offset)] = correlation_id

    async def hand_back(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition, offset)
        self.counts[key] = self.counts.get(key, 0) - 1


class FakeEngine:
    """Three tokens of `text` per answer (logprob -0.5 each, when asked), once its gate is
    open, the last with `reason`."""

    def __init__(
        self,
        *,
        step_s: float = 0.0,
        counts_tokens: bool = True,
        text: str = "x",
        reason: str = "length",
    ) -> None:
        self.text = text
        self.reason = reason
        self.gate = asyncio.Event()
        self.gate.set()
        self.hold = asyncio.Event()
        """Cleared: the generation stops after its first token until it is set."""
        self.hold.set()
        self.step_s = step_s
        self.counts_tokens = counts_tokens
        self.started: list[tuple[str, ChatBody, int]] = []
        self.deadlines: list[float | None] = []
        """The deadline each generation was given."""
        self.tenants: list[str | None] = []
        self.aborted: list[str] = []
        self.running = 0
        self.peak = 0
        """The most generations that ran at once."""

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        self.started.append((request_id, body, priority))
        self.deadlines.append(deadline)
        self.tenants.append(tenant)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            for i in range(3):
                await asyncio.sleep(self.step_s)
                if i == 1:
                    await self.hold.wait()
                logprobs = [TokenLogprob(token=self.text, logprob=-0.5)] if body.logprobs else []
                last = i == 2
                reason = self.reason if last else None
                yield EngineStep(self.text, 1, PROMPT_TOKENS, last, reason, logprobs, CACHED_TOKENS)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running -= 1

    def prompt_tokens(
        self, messages: list[ChatMessage], tools: list[Tool] | None = None
    ) -> int | None:
        """One token a word: enough to tell a long prompt from a short one."""
        if not self.counts_tokens:
            return None
        return sum(len(m.content.split()) for m in messages)

    def shutdown(self) -> None:
        """Nothing to stop."""

    def lanes_started(self) -> list[int]:
        return [priority for _, _, priority in self.started]


class FailingEngine(FakeEngine):
    """Fails every generation with `error` after `steps` steps of a token each."""

    def __init__(self, error: LlmqError, steps: int = 0) -> None:
        super().__init__()
        self.error = error
        self.steps = steps

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        self.started.append((request_id, body, priority))
        for _ in range(self.steps):
            yield EngineStep(self.text, 1, PROMPT_TOKENS)
        raise self.error


def work(lane: Lane = Lane.STANDARD, n: int = 0, stream: bool = False, **fields: Any) -> bytes:
    request = InferenceRequest(
        correlation_id=f"{lane.value}-{n}",
        tenant=fields.pop("tenant", DEFAULT_TENANT),
        lane=lane,
        body=ChatBody(messages=[ChatMessage(role="user", content="a short prompt")], stream=stream),
    )
    work = WorkItem(
        request=request,
        model=MODEL,
        fingerprint=f"{n:064d}",
        route=fields.pop("route", Route(requested=MODEL, chain=[MODEL])),
        **fields,
    )
    return work.model_dump_json().encode()


def model_spec(max_inflight: int = 4, timeout_s: float = 60.0) -> ModelSpec:
    return ModelSpec(name=MODEL, source="s", max_inflight=max_inflight, timeout_s=timeout_s)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 -- polls the fakes' plain state
            await asyncio.sleep(0.002)


Scenario = Callable[[Worker, asyncio.Event], Coroutine[Any, Any, None]]


E = TypeVar("E", bound=Engine)


def run_worker(
    consumer: FakeConsumer,
    producer: FakeProducer,
    engine_of: Callable[[], E],
    scenario: Scenario,
    *,
    spec: ModelSpec | None = None,
    lanes: LanePolicy | None = None,
    cancellations: Cancellations | None = None,
    deltas: DeltaPolicy | None = None,
    starts: MemoryStarts | None = None,
    drain_timeout_s: float = 5.0,
    claim: Claim | None = None,
) -> E:
    """Run a worker while `scenario` drives it (and sets its stop event); returns the engine."""

    async def main() -> E:
        engine = engine_of()
        worker = Worker(
            spec or model_spec(),
            engine,
            consumer,
            producer,
            worker_id="w",
            commit_interval_s=0.01,
            drain_timeout_s=drain_timeout_s,
            lanes=lanes,
            starts=MemoryStarts() if starts is None else starts,
            max_starts=3,
            cancellations=cancellations,
            deltas=deltas,
            claim=claim,
            record_limit=producer.record_limit,
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        driving = asyncio.create_task(scenario(worker, stop))
        await asyncio.gather(running, driving)
        return engine

    return asyncio.run(main())


def serve_one(
    value: bytes,
    engine: Engine,
    spec: ModelSpec | None = None,
    producer: FakeProducer | None = None,
) -> FakeProducer:
    """Serve one standard record to the end; returns what was published."""
    consumer, producer = FakeConsumer(), producer or FakeProducer()
    consumer.add(STANDARD, [value])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(STANDARD) == 1)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, spec=spec)
    return producer


def work_with(request_fields: dict[str, Any], **fields: Any) -> bytes:
    """A standard work item whose request has `request_fields` (a deadline, ...)."""
    item = WorkItem.model_validate_json(work())
    request = item.request.model_copy(update=request_fields)
    return item.model_copy(update={"request": request, **fields}).model_dump_json().encode()
