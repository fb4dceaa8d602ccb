"""The worker loop against small in-memory fakes of the consumer, producer and engine.

The fakes keep only what the loop relies on (aiokafka's pause, max_records and commit; an
engine that streams steps and notices being closed); tests/integration runs the real ones.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from functools import partial
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError

from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.metering import MeteringEvent
from schemas.names import COMPLETIONS, DLQ, METERING, TOKENS, work_topic
from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.result import TokenLogprob
from schemas.route import Route
from schemas.stream import Cancel, TokenDelta
from schemas.work import Completion, WorkItem
from workers.cancels import Cancellations
from workers.engine import EngineStep
from workers.lanes import LanePolicy
from workers.tokens import DeltaPolicy
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)

MODEL = "m"
PROMPT_TOKENS = 5
INTERACTIVE = TopicPartition(work_topic(MODEL, Lane.INTERACTIVE), 0)
BATCH = TopicPartition(work_topic(MODEL, Lane.BATCH), 0)
STANDARD = TopicPartition(work_topic(MODEL, Lane.STANDARD), 0)


class FakeConsumer:
    """Assigned partitions in memory; paused ones are not fetched; the earliest topic first."""

    def __init__(self) -> None:
        self.logs: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
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

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.update(offsets)


class FakeProducer:
    """Acknowledges every send at once and keeps what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ack.set_result(None)
        return ack

    def completions(self) -> list[Completion]:
        return [Completion.model_validate_json(v) for t, v in self.sent if t == COMPLETIONS]

    def metering(self) -> list[MeteringEvent]:
        return [MeteringEvent.model_validate_json(v) for t, v in self.sent if t == METERING]


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
    """Three tokens per answer (logprob -0.5 each, when asked), once its gate is open."""

    def __init__(self, *, step_s: float = 0.0, counts_tokens: bool = True) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.hold = asyncio.Event()
        """Cleared: the generation stops after its first token until it is set."""
        self.hold.set()
        self.step_s = step_s
        self.counts_tokens = counts_tokens
        self.started: list[tuple[str, ChatBody, int]] = []
        self.aborted: list[str] = []
        self.running = 0
        self.peak = 0
        """The most generations that ran at once."""

    async def generate(
        self, request_id: str, body: ChatBody, priority: int
    ) -> AsyncIterator[EngineStep]:
        self.started.append((request_id, body, priority))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.gate.wait()
            for i in range(3):
                await asyncio.sleep(self.step_s)
                if i == 1:
                    await self.hold.wait()
                logprobs = [TokenLogprob(token="x", logprob=-0.5)] if body.logprobs else []
                last = i == 2
                yield EngineStep("x", 1, PROMPT_TOKENS, last, "length" if last else None, logprobs)
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request_id)
            raise
        finally:
            self.running -= 1

    def prompt_tokens(self, messages: list[ChatMessage]) -> int | None:
        """One token a word: enough to tell a long prompt from a short one."""
        if not self.counts_tokens:
            return None
        return sum(len(m.content.split()) for m in messages)

    def shutdown(self) -> None:
        """Nothing to stop."""

    def lanes_started(self) -> list[int]:
        return [priority for _, _, priority in self.started]


def _work(lane: Lane = Lane.STANDARD, n: int = 0, stream: bool = False, **fields: Any) -> bytes:
    request = InferenceRequest(
        correlation_id=f"{lane.value}-{n}",
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


def _spec(max_inflight: int = 4, timeout_s: float = 60.0) -> ModelSpec:
    return ModelSpec(name=MODEL, source="s", max_inflight=max_inflight, timeout_s=timeout_s)


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 -- polls the fakes' plain state
            await asyncio.sleep(0.002)


Scenario = Callable[[Worker, asyncio.Event], Coroutine[Any, Any, None]]


def _serve(
    consumer: FakeConsumer,
    producer: FakeProducer,
    engine_of: Callable[[], FakeEngine],
    scenario: Scenario,
    *,
    spec: ModelSpec | None = None,
    lanes: LanePolicy | None = None,
    cancellations: Cancellations | None = None,
    deltas: DeltaPolicy | None = None,
    starts: MemoryStarts | None = None,
    drain_timeout_s: float = 5.0,
) -> FakeEngine:
    """Run a worker while `scenario` drives it (and sets its stop event); returns the engine."""

    async def main() -> FakeEngine:
        engine = engine_of()
        worker = Worker(
            spec or _spec(),
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
        )
        stop = asyncio.Event()
        running = asyncio.create_task(worker.run(stop))
        driving = asyncio.create_task(scenario(worker, stop))
        await asyncio.gather(running, driving)
        return engine

    return asyncio.run(main())


def test_interactive_starts_at_once_behind_a_batch_backlog() -> None:
    """With interactive traffic lately, a batch backlog keeps to its cap: the next
    interactive request starts at once."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(INTERACTIVE, [_work(Lane.INTERACTIVE, 100)])
    lanes = LanePolicy(min_share=0.0, batch_cap=0.5, buffer=4)
    engine = FakeEngine()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(producer.completions()) == 1)
        engine.gate.clear()
        consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(20)])
        await _until(lambda: len(engine.started) == 3)
        await asyncio.sleep(0.05)
        assert engine.lanes_started() == [0, 2, 2], "batch stops at its cap: 2 of 4"
        assert consumer.positions[BATCH] <= 2 + 4, "the rest of the backlog stays in Kafka"
        assert BATCH in consumer.paused
        consumer.add(INTERACTIVE, [_work(Lane.INTERACTIVE, i) for i in range(2)])
        await _until(lambda: len(engine.started) == 5)
        assert engine.lanes_started() == [0, 2, 2, 0, 0]
        engine.gate.set()
        await _until(lambda: len(producer.completions()) == 23)
        await _until(lambda: consumer.committed == {BATCH: 20, INTERACTIVE: 3})
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert all(c.error is None for c in producer.completions())
    assert len(producer.metering()) == 23


def test_a_batch_backlog_with_no_higher_lane_work_fills_the_engine() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(20)])
    lanes = LanePolicy(min_share=0.0, batch_cap=0.5, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 4)
        await asyncio.sleep(0.05)
        assert engine.lanes_started() == [2] * 4, "no headroom held: all 4 slots"
        engine.gate.set()
        await _until(lambda: consumer.committed == {BATCH: 20})
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert len(producer.metering()) == 20


def test_commits_stop_before_records_still_buffered_at_stop() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(10)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 2 and consumer.positions[BATCH] == 6)
        stop.set()
        await asyncio.sleep(0.05)  # the loop has stopped and is draining
        engine.gate.set()

    _serve(consumer, producer, lambda: engine, scenario, spec=_spec(max_inflight=2), lanes=lanes)
    assert len(engine.started) == 2, "buffered records are left to the next owner"
    assert consumer.committed == {BATCH: 2}


def test_a_revoked_partitions_buffered_records_are_never_started() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(10)])
    consumer.add(STANDARD, [_work(Lane.STANDARD, 0)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 2 and consumer.positions[STANDARD] == 1)
        consumer.rebalancing = True
        revoking = asyncio.create_task(worker.rebalance_listener().on_partitions_revoked({BATCH}))
        await asyncio.sleep(0.05)
        engine.gate.set()  # the revoked partition's generations finish: nothing of it follows
        await revoking
        consumer.revoke(BATCH)
        consumer.rebalancing = False
        await _until(lambda: len(producer.completions()) >= 3)
        await _until(lambda: consumer.committed.get(STANDARD) == 1)
        await asyncio.sleep(0.05)
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, spec=_spec(max_inflight=2), lanes=lanes)
    assert engine.lanes_started() == [2, 2, 1], "then standard, and no more of the batch"
    assert consumer.committed.get(BATCH) == 2, "those that finished, before it moved"


def _one(value: bytes, engine: FakeEngine, spec: ModelSpec | None = None) -> FakeProducer:
    """Serve one standard record to the end; returns what was published."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [value])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: consumer.committed.get(STANDARD) == 1)
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, spec=spec)
    return producer


def test_a_generation_past_its_timeout_is_aborted_and_fails_retriably() -> None:
    engine = FakeEngine(step_s=30)
    producer = _one(_work(), engine, spec=_spec(timeout_s=0.05))
    [completion] = producer.completions()
    assert completion.response is None
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ENGINE_TIMEOUT
    assert completion.error.retriable
    assert "0.05s" in completion.error.message
    assert engine.aborted == [engine.started[0][0]], "closing the stream aborts it in the engine"
    assert producer.metering() == []


def test_a_cascade_asks_for_logprobs_to_judge_the_answer_but_does_not_return_them() -> None:
    engine = FakeEngine()
    route = Route(requested="auto", chain=[MODEL, "bigger"], cascade=True)
    [completion] = _one(_work(route=route), engine).completions()
    [(_, body, _)] = engine.started
    assert body.logprobs
    assert completion.mean_logprob == pytest.approx(-0.5)
    assert completion.response is not None
    assert completion.response.choices[0].logprobs is None


@pytest.mark.parametrize(
    "route",
    [
        Route(requested=MODEL, chain=[MODEL]),
        Route(requested="auto", chain=["smaller", MODEL], cascade=True, tried=["smaller"]),
        Route(requested=MODEL, chain=[MODEL, "fallback"]),
    ],
    ids=["single", "last-of-cascade", "fallback-only"],
)
def test_no_logprobs_are_asked_for_when_nothing_would_escalate(route: Route) -> None:
    engine = FakeEngine()
    [completion] = _one(_work(route=route), engine).completions()
    [(_, body, _)] = engine.started
    assert not body.logprobs
    assert completion.mean_logprob is None


def test_metering_counts_the_prompt_tokens_compression_saved() -> None:
    long = [ChatMessage(role="user", content=" ".join(["word"] * 12))]
    [event] = _one(_work(uncompressed=long), FakeEngine()).metering()
    assert event.prompt_tokens == PROMPT_TOKENS
    assert event.prompt_tokens_saved == 12 - PROMPT_TOKENS


@pytest.mark.parametrize(
    ("uncompressed", "counts_tokens"),
    [(None, True), ([ChatMessage(role="user", content="long " * 40)], False)],
    ids=["not-compressed", "engine-cannot-tell"],
)
def test_no_tokens_saved_without_compression_or_a_tokenizer(
    uncompressed: list[ChatMessage] | None, counts_tokens: bool
) -> None:
    engine = FakeEngine(counts_tokens=counts_tokens)
    [event] = _one(_work(uncompressed=uncompressed), engine).metering()
    assert event.prompt_tokens_saved == 0


def _work_with(request_fields: dict[str, Any], **fields: Any) -> bytes:
    """A standard work item whose request has `request_fields` (a deadline, ...)."""
    work = WorkItem.model_validate_json(_work())
    request = work.request.model_copy(update=request_fields)
    return work.model_copy(update={"request": request, **fields}).model_dump_json().encode()


def test_a_generation_past_the_requests_deadline_is_aborted_and_expires() -> None:
    engine = FakeEngine(step_s=30)
    producer = _one(_work_with({"deadline": time.time() + 0.1}), engine)
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.EXPIRED
    assert "aborted" in completion.error.message
    assert engine.aborted == [engine.started[0][0]], "closing the stream aborts it in the engine"


def test_a_request_past_its_deadline_is_not_started() -> None:
    engine = FakeEngine()
    producer = _one(_work_with({"deadline": time.time() - 1}), engine)
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.EXPIRED
    assert engine.started == []


def test_a_retry_starts_no_earlier_than_its_backoff_allows() -> None:
    not_before = time.time() + 0.3
    engine = FakeEngine()
    producer = _one(_work(attempt=2, not_before=not_before), engine)
    [completion] = producer.completions()
    assert completion.error is None
    assert completion.work.attempt == 2
    assert completion.timings.queue_ms is not None
    assert time.time() >= not_before


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


def test_an_outcome_the_broker_refused_is_sent_again_before_the_offset_commits() -> None:
    consumer, producer = FakeConsumer(), FlakyProducer(failures=2)
    consumer.add(STANDARD, [_work()])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: consumer.committed.get(STANDARD) == 1, timeout_s=20)
        stop.set()

    _serve(consumer, producer, FakeEngine, scenario)
    assert len(producer.completions()) == 1
    assert len(producer.metering()) == 1


def test_generations_of_revoked_partitions_finish_and_commit_before_they_move() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(2)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 2)
        finishing = asyncio.create_task(worker.finish({BATCH}))
        await asyncio.sleep(0.05)
        assert not finishing.done(), "it waits for the generations in flight"
        engine.gate.set()
        await finishing
        assert consumer.committed == {BATCH: 2}, "committed before the partition moves"
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert len(producer.completions()) == 2


def test_a_generation_past_the_bound_whose_partition_moved_is_aborted_and_handed_back() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH)])
    starts = MemoryStarts()
    engine = FakeEngine()
    engine.gate.clear()  # never finishes

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 1)
        await worker.finish({BATCH})
        worker.forget({BATCH})
        assert engine.aborted == [], "it runs on until the assignment says where it went"
        consumer.revoke(BATCH)
        await worker.take_back({STANDARD})
        # No longer generated here, and not a crash.
        assert engine.aborted == [engine.started[0][0]]
        assert starts.counts == {(BATCH.topic, 0, 0): 0}
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, starts=starts, drain_timeout_s=0.05)
    assert producer.completions() == []
    assert consumer.committed.get(BATCH, 0) == 0


def test_a_generation_past_the_bound_whose_partition_came_back_runs_on_once() -> None:
    """An eager rebalance takes every partition and mostly gives it back: a generation
    that outlived the drain bound is kept, not restarted, and its offset stays in flight
    until it is answered; the records fetched again from the committed offset are not
    started twice."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(3)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.hold.clear()  # each generation stops after its first token

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 3)
        consumer.rebalancing = True
        await worker.finish({BATCH})
        worker.forget({BATCH})
        consumer.positions[BATCH] = consumer.committed.get(BATCH, 0)  # fetched again
        await worker.take_back({BATCH})
        consumer.rebalancing = False
        await asyncio.sleep(0.05)
        assert engine.aborted == [] and len(engine.started) == 3, "not restarted"
        await worker.commit()
        assert consumer.committed.get(BATCH, 0) == 0, "still in flight, not committed"
        engine.hold.set()
        await _until(lambda: consumer.committed.get(BATCH) == 3)
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, lanes=lanes, drain_timeout_s=0.05)
    assert sorted(c.work.request.correlation_id for c in producer.completions()) == [
        "batch-0",
        "batch-1",
        "batch-2",
    ]
    assert len(engine.started) == 3


def test_a_record_answered_before_its_partition_moved_is_not_generated_again() -> None:
    """The last owner published offset 1's outcome but could commit only up to offset 0,
    still running when the partition moved: here 0 runs, 1 is skipped, both commit."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [_work(Lane.BATCH, i) for i in range(2)])
    starts = MemoryStarts(answers={(BATCH.topic, 0, 1): "batch-1", (BATCH.topic, 0, 0): "x"})
    engine = FakeEngine()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: consumer.committed.get(BATCH) == 2)
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, starts=starts)
    assert [c.work.request.correlation_id for c in producer.completions()] == ["batch-0"]
    assert len(engine.started) == 1, "a mark of another request at its offset is not its own"
    assert starts.answers[(BATCH.topic, 0, 0)] == "batch-0"


class SlowAckProducer(FakeProducer):
    """Sends at once; the broker acknowledges only once `acks` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.acks = asyncio.Event()

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(self.acks.wait())
        waiting.add_done_callback(lambda _: ack.set_result(None))
        return ack


def test_a_generation_publishing_its_outcome_at_the_bound_is_not_handed_back() -> None:
    consumer = FakeConsumer()
    consumer.add(BATCH, [_work(Lane.BATCH)])
    starts = MemoryStarts()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(producer.completions()) == 1)  # sent, not yet acknowledged
        finishing = asyncio.create_task(worker.finish({BATCH}))
        await asyncio.sleep(0.2)
        assert not finishing.done(), "past the bound it waits for the ack: the answer is out"
        producer.acks.set()
        await finishing
        assert consumer.committed == {BATCH: 1}, "so the next owner does not answer it again"
        assert starts.counts == {}, "an outcome, not a hand-back"
        stop.set()

    producer = SlowAckProducer()
    _serve(consumer, producer, FakeEngine, scenario, starts=starts, drain_timeout_s=0.05)
    assert len(producer.completions()) == 1


async def _until_answered(producer: FakeProducer, worker: Worker, stop: asyncio.Event) -> None:
    await _until(lambda: bool(producer.completions()))
    stop.set()


def _deltas(producer: FakeProducer) -> list[TokenDelta]:
    return [TokenDelta.model_validate_json(v) for t, v in producer.sent if t == TOKENS]


def test_a_streamed_generation_publishes_its_pieces_then_one_with_the_usage() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work(stream=True)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: bool(producer.completions()))
        stop.set()

    _serve(consumer, producer, FakeEngine, scenario, deltas=DeltaPolicy(10.0, 2))
    deltas = _deltas(producer)
    # The first token at once, then every 2 tokens, then the finish with the usage.
    assert [(d.seq, d.text, d.tokens) for d in deltas] == [(0, "x", 1), (1, "xx", 2), (2, "", 0)]
    assert {d.correlation_id for d in deltas} == {"standard-0"}
    assert len({d.generation for d in deltas}) == 1
    assert [d.finish_reason for d in deltas] == [None, None, "length"]
    usage = deltas[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    [done] = producer.completions()
    assert done.response is not None and done.response.choices[0].message.content == "xxx"


def test_a_redelivered_record_streams_under_another_generation() -> None:
    generations = []
    for producer in [FakeProducer(), FakeProducer()]:  # as the next worker after a crash
        consumer = FakeConsumer()
        consumer.add(STANDARD, [_work(stream=True)])
        _serve(consumer, producer, FakeEngine, partial(_until_answered, producer))
        generations += list({d.generation for d in _deltas(producer)})
    assert len(generations) == 2 and generations[0] != generations[1], "readers tell them apart"


def test_a_whole_answer_publishes_no_pieces() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work()])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: bool(producer.completions()))
        stop.set()

    _serve(consumer, producer, FakeEngine, scenario)
    assert _deltas(producer) == []


def test_a_cancelled_generation_is_aborted_answered_cancelled_and_metered() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work(stream=True)])
    cancellations = Cancellations()
    engine = FakeEngine()
    engine.hold.clear()  # one token, then it waits

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: bool(_deltas(producer)))  # the first token is out
        assert cancellations.add(Cancel(correlation_id="standard-0", tenant="default"))
        await _until(lambda: bool(producer.completions()))
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, cancellations=cancellations)
    [done] = producer.completions()
    assert done.error is not None and done.error.code is ErrorCode.CANCELLED
    assert done.error.message.endswith("aborted after 1 tokens")
    assert engine.aborted == [engine.started[0][0]]
    [event] = producer.metering()  # the tokens it made are paid for all the same
    assert (event.outcome, event.prompt_tokens, event.completion_tokens) == ("cancelled", 5, 1)
    assert consumer.committed == {STANDARD: 1}


def test_work_cancelled_before_it_starts_is_skipped() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    cancellations = Cancellations()
    assert not cancellations.add(Cancel(correlation_id="standard-0", tenant="default"))
    consumer.add(STANDARD, [_work(), _work(n=1)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(producer.completions()) == 2)
        stop.set()

    engine = _serve(consumer, producer, FakeEngine, scenario, cancellations=cancellations)
    skipped, served = sorted(producer.completions(), key=lambda c: c.work.request.correlation_id)
    assert skipped.error is not None and skipped.error.code is ErrorCode.CANCELLED
    assert skipped.error.message == "cancelled before it started"
    assert served.response is not None
    assert [rid.split("@")[0] for rid, _, _ in engine.started] == ["standard-1"]
    assert [e.correlation_id for e in producer.metering()] == ["standard-1"]


def test_a_record_that_took_its_worker_down_max_times_is_dead_lettered_not_run() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work()])
    starts = MemoryStarts({(STANDARD.topic, 0, 0): 3})  # three starts, three dead workers

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: bool(producer.completions()))
        stop.set()

    engine = _serve(consumer, producer, FakeEngine, scenario, starts=starts)
    assert engine.started == []
    [value] = [v for t, v in producer.sent if t == DLQ]
    assert value == consumer.logs[STANDARD][0].value  # the work record itself, to replay
    [done] = producer.completions()
    assert done.error is not None and done.error.code is ErrorCode.CRASH_LOOP
    assert "took the worker down 3 times" in done.error.message
    assert done.engine_retried, "the stream processor must not send it again"
    assert producer.metering() == []
    assert starts.counts == {} and consumer.committed == {STANDARD: 1}


def test_a_records_last_start_before_the_bound_runs_alone_then_the_rest_side_by_side() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work(n=i) for i in range(3)])
    # Running when two workers died (max 3: its last chance), and when one did.
    starts = MemoryStarts({(STANDARD.topic, 0, 0): 2, (STANDARD.topic, 0, 1): 1})
    engine = FakeEngine()
    engine.hold.clear()  # each generation waits after its first token

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 1)
        await asyncio.sleep(0.05)
        alone = [rid for rid, _, _ in engine.started]
        # Those waiting for their turn have not started: a crash now would not count them.
        assert starts.counts == {(STANDARD.topic, 0, 0): 3, (STANDARD.topic, 0, 1): 1}
        engine.hold.set()
        await _until(lambda: len(producer.completions()) == 3)
        stop.set()
        assert alone == [engine.started[0][0]]

    _serve(consumer, producer, lambda: engine, scenario, starts=starts)
    assert [rid.split("@")[0] for rid, _, _ in engine.started] == [
        "standard-0",
        "standard-1",
        "standard-2",
    ]
    assert engine.peak == 2, "the other two ran together, never beside the first"
    assert all(c.response is not None for c in producer.completions())
    assert starts.counts == {}, "an outcome clears the count"
    assert consumer.committed == {STANDARD: 3}


def test_a_generation_handed_back_by_a_drain_gives_its_start_back() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [_work()])
    starts = MemoryStarts()
    engine = FakeEngine()
    engine.gate.clear()  # never gets going

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await _until(lambda: len(engine.started) == 1)
        stop.set()

    _serve(consumer, producer, lambda: engine, scenario, starts=starts, drain_timeout_s=0.05)
    assert producer.completions() == []
    assert starts.counts == {(STANDARD.topic, 0, 0): 0}, "a hand-back is not a crash"
    assert consumer.committed.get(STANDARD, 0) == 0, "left for the next owner"
