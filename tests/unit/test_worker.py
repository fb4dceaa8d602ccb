"""The worker loop against small in-memory fakes of the consumer, producer and engine
(tests/unit/worker_fakes.py); its rebalances are in test_worker_rebalance.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError

from schemas.catalog import ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import DLQ
from schemas.request import ChatBody, ChatMessage
from schemas.route import Route
from schemas.stream import Cancel
from schemas.tools import Tool
from tests.unit.worker_fakes import (
    BATCH,
    CACHED_TOKENS,
    INTERACTIVE,
    MODEL,
    PROMPT_TOKENS,
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    FlakyProducer,
    MemoryStarts,
    model_spec,
    run_worker,
    serve_one,
    until,
    work,
    work_with,
)
from workers.cancels import Cancellations
from workers.engine import EngineStep
from workers.lanes import LanePolicy
from workers.tokens import DeltaPolicy
from workers.worker import Worker

pytestmark = pytest.mark.timeout(30)


def test_interactive_starts_at_once_behind_a_batch_backlog() -> None:
    """With interactive traffic lately, a batch backlog keeps to its cap: the next
    interactive request starts at once."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(INTERACTIVE, [work(Lane.INTERACTIVE, 100)])
    lanes = LanePolicy(min_share=0.0, batch_cap=0.5, buffer=4)
    engine = FakeEngine()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(producer.completions()) == 1)
        engine.gate.clear()
        consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(20)])
        await until(lambda: len(engine.started) == 3)
        await asyncio.sleep(0.05)
        assert engine.lanes_started() == [0, 2, 2], "batch stops at its cap: 2 of 4"
        assert consumer.positions[BATCH] <= 2 + 4, "the rest of the backlog stays in Kafka"
        assert BATCH in consumer.paused
        consumer.add(INTERACTIVE, [work(Lane.INTERACTIVE, i) for i in range(2)])
        await until(lambda: len(engine.started) == 5)
        assert engine.lanes_started() == [0, 2, 2, 0, 0]
        engine.gate.set()
        await until(lambda: len(producer.completions()) == 23)
        await until(lambda: consumer.committed == {BATCH: 20, INTERACTIVE: 3})
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert all(c.error is None for c in producer.completions())
    assert len(producer.metering()) == 23


def test_a_batch_backlog_with_no_higher_lane_work_fills_the_engine() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(20)])
    lanes = LanePolicy(min_share=0.0, batch_cap=0.5, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 4)
        await asyncio.sleep(0.05)
        assert engine.lanes_started() == [2] * 4, "no headroom held: all 4 slots"
        engine.gate.set()
        await until(lambda: consumer.committed == {BATCH: 20})
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, lanes=lanes)
    assert len(producer.metering()) == 20


def test_commits_stop_before_records_still_buffered_at_stop() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(BATCH, [work(Lane.BATCH, i) for i in range(10)])
    lanes = LanePolicy(min_share=0.0, standard_cap=1.0, batch_cap=1.0, buffer=4)
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 2 and consumer.positions[BATCH] == 6)
        stop.set()
        await asyncio.sleep(0.05)  # the loop has stopped and is draining
        engine.gate.set()

    run_worker(
        consumer, producer, lambda: engine, scenario, spec=model_spec(max_inflight=2), lanes=lanes
    )
    assert len(engine.started) == 2, "buffered records are left to the next owner"
    assert consumer.committed == {BATCH: 2}


def test_a_generation_past_its_timeout_is_aborted_and_fails_retriably() -> None:
    engine = FakeEngine(step_s=30)
    producer = serve_one(work(), engine, spec=model_spec(timeout_s=0.05))
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
    [completion] = serve_one(work(route=route), engine).completions()
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
    [completion] = serve_one(work(route=route), engine).completions()
    [(_, body, _)] = engine.started
    assert not body.logprobs
    assert completion.mean_logprob is None


def test_the_engine_is_told_whose_request_it_runs_and_the_usage_what_it_had_cached() -> None:
    engine = FakeEngine()
    [completion] = serve_one(work(tenant="acme"), engine).completions()
    assert engine.tenants == ["acme"]  # the vLLM engine keeps tenants' cached prefixes apart
    assert completion.response is not None and completion.response.usage is not None
    details = completion.response.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == CACHED_TOKENS


def test_metering_counts_the_prompt_tokens_compression_saved() -> None:
    long = [ChatMessage(role="user", content=" ".join(["word"] * 12))]
    [event] = serve_one(work(uncompressed=long), FakeEngine()).metering()
    assert event.prompt_tokens == PROMPT_TOKENS
    assert event.prompt_tokens_saved == 12 - PROMPT_TOKENS


class CountsAlongside(FakeEngine):
    """Generates only once the app's own prompt is being counted (or 5 s passed), and says
    whether it was: a count after the answer made the answer wait for it, queued behind
    every prompt the engine's one tokenizing thread had yet to build."""

    def __init__(self) -> None:
        super().__init__()
        self.counting = threading.Event()
        self.counted_alongside: list[bool] = []

    async def generate(self, *args: Any, **kwargs: Any) -> AsyncIterator[EngineStep]:
        seen = await asyncio.get_running_loop().run_in_executor(None, self.counting.wait, 5)
        self.counted_alongside.append(seen)
        async for step in super().generate(*args, **kwargs):
            yield step

    def prompt_tokens(
        self, messages: list[ChatMessage], tools: list[Tool] | None = None
    ) -> int | None:
        self.counting.set()
        return super().prompt_tokens(messages, tools)


def test_the_apps_own_prompt_is_counted_while_its_answer_is_generated() -> None:
    long = [ChatMessage(role="user", content=" ".join(["word"] * 12))]
    engine = CountsAlongside()
    [event] = serve_one(work(uncompressed=long), engine).metering()
    assert engine.counted_alongside == [True]
    assert event.prompt_tokens_saved == 12 - PROMPT_TOKENS


class RefusesTheOriginal(FakeEngine):
    """Its template refuses the app's own prompt at once."""

    def prompt_tokens(
        self, messages: list[ChatMessage], tools: list[Tool] | None = None
    ) -> int | None:
        raise LlmqError(ErrorCode.INVALID_REQUEST, "the template refuses a role")


def test_a_count_nobody_awaits_leaves_no_unread_error(caplog: pytest.LogCaptureFixture) -> None:
    """A drain handed the generation back after the count had failed: its error, never read,
    was logged by asyncio with a traceback as the task was collected."""
    consumer, producer = FakeConsumer(), FakeProducer()
    long = [ChatMessage(role="user", content=" ".join(["word"] * 12))]
    consumer.add(STANDARD, [work(uncompressed=long)])
    engine = RefusesTheOriginal()
    engine.gate.clear()  # never gets going

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 1)
        stop.set()

    with caplog.at_level(logging.ERROR):
        run_worker(consumer, producer, lambda: engine, scenario, drain_timeout_s=0.05)
        gc.collect()
    assert producer.completions() == [], "handed back"
    assert "never retrieved" not in caplog.text


@pytest.mark.parametrize(
    ("uncompressed", "counts_tokens"),
    [(None, True), ([ChatMessage(role="user", content="long " * 40)], False)],
    ids=["not-compressed", "engine-cannot-tell"],
)
def test_no_tokens_saved_without_compression_or_a_tokenizer(
    uncompressed: list[ChatMessage] | None, counts_tokens: bool
) -> None:
    engine = FakeEngine(counts_tokens=counts_tokens)
    [event] = serve_one(work(uncompressed=uncompressed), engine).metering()
    assert event.prompt_tokens_saved == 0


def test_a_generation_past_the_requests_deadline_is_aborted_and_expires() -> None:
    engine = FakeEngine(step_s=30)
    producer = serve_one(work_with({"deadline": time.time() + 0.1}), engine)
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.EXPIRED
    assert "aborted" in completion.error.message
    assert engine.aborted == [engine.started[0][0]], "closing the stream aborts it in the engine"


def test_a_request_past_its_deadline_is_not_started() -> None:
    engine = FakeEngine()
    producer = serve_one(work_with({"deadline": time.time() - 1}), engine)
    [completion] = producer.completions()
    assert completion.error is not None
    assert completion.error.code is ErrorCode.EXPIRED
    assert engine.started == []


def test_tool_choice_auto_for_a_model_whose_calls_are_not_read_is_refused_unstarted() -> None:
    tools = [{"type": "function", "function": {"name": "ping"}}]
    ask = [{"role": "user", "content": "Up?"}]
    body = ChatBody.model_validate({"messages": ask, "tools": tools, "tool_choice": "auto"})
    engine = FakeEngine()
    [completion] = serve_one(work_with({"body": body}), engine).completions()
    assert completion.error is not None and completion.error.code is ErrorCode.UNSUPPORTED
    assert "names no tool_call_parser" in completion.error.message
    assert engine.started == []
    reads = ModelSpec(name=MODEL, source="s", tool_call_parser="hermes")
    [completion] = serve_one(work_with({"body": body}), engine, spec=reads).completions()
    assert completion.error is None and len(engine.started) == 1


def test_a_streamed_answer_of_calls_ends_its_pieces_as_its_result_does() -> None:
    """The last piece said "stop" where the result said "tool_calls": an app reading
    llmq.tokens took the calls for text."""
    tools = [{"type": "function", "function": {"name": "ping"}}]
    ask = [{"role": "user", "content": "Up?"}]
    body = {"messages": ask, "tools": tools, "tool_choice": "auto", "stream": True}
    call = '<tool_call>{"name": "ping", "arguments": {}}</tool_call>'
    reads = ModelSpec(name=MODEL, source="s", tool_call_parser="hermes")
    engine = FakeEngine(text=call, reason="stop")
    served = serve_one(work_with({"body": ChatBody.model_validate(body)}), engine, spec=reads)
    [completion] = served.completions()
    assert completion.response is not None
    [choice] = completion.response.choices
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls or []) == 3
    assert [d.finish_reason for d in served.deltas()][-1] == "tool_calls"


def test_a_retry_starts_no_earlier_than_its_backoff_allows() -> None:
    not_before = time.time() + 0.3
    engine = FakeEngine()
    producer = serve_one(work(attempt=2, not_before=not_before), engine)
    [completion] = producer.completions()
    assert completion.error is None
    assert completion.work.attempt == 2
    assert completion.timings.queue_ms is not None
    assert time.time() >= not_before


def test_an_outcome_the_broker_refused_is_sent_again_before_the_offset_commits() -> None:
    consumer, producer = FakeConsumer(), FlakyProducer(failures=2)
    consumer.add(STANDARD, [work()])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(STANDARD) == 1, timeout_s=20)
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario)
    assert len(producer.completions()) == 1
    assert len(producer.metering()) == 1


async def _until_answered(producer: FakeProducer, worker: Worker, stop: asyncio.Event) -> None:
    await until(lambda: bool(producer.completions()))
    stop.set()


def test_a_streamed_generation_publishes_its_pieces_then_one_with_the_usage() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work(stream=True)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario, deltas=DeltaPolicy(10.0, 2))
    deltas = producer.deltas()
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
        consumer.add(STANDARD, [work(stream=True)])
        run_worker(consumer, producer, FakeEngine, partial(_until_answered, producer))
        generations += list({d.generation for d in producer.deltas()})
    assert len(generations) == 2 and generations[0] != generations[1], "readers tell them apart"


def test_a_whole_answer_publishes_no_pieces() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work()])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario)
    assert producer.deltas() == []
    [answered] = producer.completions()
    assert answered.model_digest == model_spec().digest, "whose settings answered it"


def test_a_cancelled_generation_is_aborted_answered_cancelled_and_metered() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work(stream=True)])
    cancellations = Cancellations()
    engine = FakeEngine()
    engine.hold.clear()  # one token, then it waits

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.deltas()))  # the first token is out
        assert cancellations.add(Cancel(correlation_id="standard-0", tenant="default"))
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, cancellations=cancellations)
    [done] = producer.completions()
    assert done.error is not None and done.error.code is ErrorCode.CANCELLED
    assert done.error.message.endswith("stopped after 1 tokens")
    assert engine.aborted == [engine.started[0][0]]
    [event] = producer.metering()  # the tokens it made are paid for all the same
    assert (event.outcome, event.prompt_tokens, event.completion_tokens) == ("cancelled", 5, 1)
    assert consumer.committed == {STANDARD: 1}


def test_work_cancelled_before_it_starts_is_skipped() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    cancellations = Cancellations()
    assert not cancellations.add(Cancel(correlation_id="standard-0", tenant="default"))
    consumer.add(STANDARD, [work(), work(n=1)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(producer.completions()) == 2)
        stop.set()

    engine = run_worker(consumer, producer, FakeEngine, scenario, cancellations=cancellations)
    skipped, served = sorted(producer.completions(), key=lambda c: c.work.request.correlation_id)
    assert skipped.error is not None and skipped.error.code is ErrorCode.CANCELLED
    assert skipped.error.message == "the client went away; generation stopped before it started"
    assert served.response is not None
    assert [rid.split("@")[0] for rid, _, _ in engine.started] == ["standard-1"]
    assert [e.correlation_id for e in producer.metering()] == ["standard-1"]


def test_a_record_that_took_its_worker_down_max_times_is_dead_lettered_not_run() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work()])
    starts = MemoryStarts({(STANDARD.topic, 0, 0): 3})  # three starts, three dead workers

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    engine = run_worker(consumer, producer, FakeEngine, scenario, starts=starts)
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
    consumer.add(STANDARD, [work(n=i) for i in range(3)])
    # Running when two workers died (max 3: its last chance), and when one did.
    starts = MemoryStarts({(STANDARD.topic, 0, 0): 2, (STANDARD.topic, 0, 1): 1})
    engine = FakeEngine()
    engine.hold.clear()  # each generation waits after its first token

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 1)
        await asyncio.sleep(0.05)
        alone = [rid for rid, _, _ in engine.started]
        # Those waiting for their turn have not started: a crash now would not count them.
        assert starts.counts == {(STANDARD.topic, 0, 0): 3, (STANDARD.topic, 0, 1): 1}
        engine.hold.set()
        await until(lambda: len(producer.completions()) == 3)
        stop.set()
        assert alone == [engine.started[0][0]]

    run_worker(consumer, producer, lambda: engine, scenario, starts=starts)
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
    consumer.add(STANDARD, [work()])
    starts = MemoryStarts()
    engine = FakeEngine()
    engine.gate.clear()  # never gets going

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(engine.started) == 1)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario, starts=starts, drain_timeout_s=0.05)
    assert producer.completions() == []
    assert starts.counts == {(STANDARD.topic, 0, 0): 0}, "a hand-back is not a crash"
    assert consumer.committed.get(STANDARD, 0) == 0, "left for the next owner"


def test_a_retry_waiting_out_its_backoff_counts_no_start() -> None:
    """Its start is counted once the wait is over: a worker stopped meanwhile (a drain, a
    crash) has nothing to give back or blame on it."""
    consumer, producer, starts = FakeConsumer(), FakeProducer(), MemoryStarts()
    consumer.add(STANDARD, [work(attempt=2, not_before=time.time() + 600)])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(worker._tasks))
        await asyncio.sleep(0.2)  # time enough to have counted a start, had it been
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario, starts=starts, drain_timeout_s=0.05)
    assert starts.counts == {}
    assert producer.completions() == []


def test_the_engine_is_given_the_requests_deadline() -> None:
    """An engine that waits between attempts of its own (a remote server's) stops while a
    fallback model can still answer in time."""
    engine, deadline = FakeEngine(), time.time() + 600
    serve_one(work_with({"deadline": deadline}), engine)
    serve_one(work(), engine)
    assert engine.deadlines == [deadline, None]


@pytest.mark.timeout(20)
def test_a_retry_waits_its_backoff_not_the_lead_of_the_clock_that_set_it() -> None:
    """A stream processor whose clock runs an hour ahead sets not_before an hour ahead of
    this worker's clock: the retry waited that hour, holding its lane's slot."""
    ahead = time.time() + 3600
    engine = FakeEngine()
    producer = serve_one(work_with({}, attempt=2, not_before=ahead + 0.05, sent_at=ahead), engine)
    assert [c.error for c in producer.completions()] == [None]


def test_every_partition_the_group_has_no_offset_for_gets_its_start_committed() -> None:
    """Without work too: a group without offsets is deleted (Dead) soon after its last
    worker leaves, and the front door refuses a model whose group is Dead. Never past a
    record in flight; a partition the group has an offset for is left alone."""
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [])
    consumer.positions[STANDARD] = 3  # the log's start: older records were deleted
    consumer.add(BATCH, [])
    consumer.committed[BATCH], consumer.positions[BATCH] = 5, 7  # 7: it was committed again
    consumer.add(INTERACTIVE, [work(Lane.INTERACTIVE, i) for i in range(2)])
    engine = FakeEngine()
    engine.gate.clear()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: STANDARD in consumer.committed and len(engine.started) == 2)
        await asyncio.sleep(0.05)  # commits go on
        assert consumer.committed == {STANDARD: 3, BATCH: 5, INTERACTIVE: 0}
        engine.gate.set()
        await until(lambda: consumer.committed.get(INTERACTIVE) == 2)
        stop.set()

    run_worker(consumer, producer, lambda: engine, scenario)


class Unsure(FakeConsumer):
    """A consumer that cannot say a partition's position at the first ask (its leader
    moving)."""

    asked = 0

    async def position(self, tp: TopicPartition) -> int:
        self.asked += 1
        if self.asked == 1:
            raise KafkaConnectionError("the partition's leader is away")
        return await super().position(tp)


def test_a_start_kafka_cannot_say_is_asked_again_at_the_next_commit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    consumer, producer = Unsure(), FakeProducer()
    consumer.add(STANDARD, [])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: consumer.committed.get(STANDARD) == 0)
        stop.set()

    with caplog.at_level(logging.WARNING, logger="workers.group_starts"):
        run_worker(consumer, producer, FakeEngine, scenario)
    assert consumer.asked == 2
    assert "cannot see where the group starts its partitions, will retry" in caplog.text
