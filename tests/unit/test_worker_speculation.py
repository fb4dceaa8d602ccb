"""The worker's side of speculation: a request the semantic cache answered is skipped or
stopped as superseded, and a speculative stream claims its request before its first piece
(the stream processor's side is in test_speculation.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from schemas.errors import ErrorCode
from schemas.stream import Cancel
from schemas.work import LEGACY_SPECULATION, WorkItem
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeEngine,
    FakeProducer,
    run_worker,
    until,
    work,
)
from workers.cancels import Cancellations
from workers.claims import Claim
from workers.worker import Worker


def _answered(speculation: str) -> Cancel:
    """The stream processor's cancellation of a speculative send the cache answered."""
    return Cancel(
        correlation_id="standard-0", tenant="default", answered=True, speculation=speculation
    )


def test_work_a_cache_answered_before_it_starts_is_skipped_as_superseded() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    cancellations = Cancellations()
    answered = _answered("s1")
    assert not cancellations.add(answered)
    consumer.add(STANDARD, [work(speculation="s1")])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    engine = run_worker(consumer, producer, FakeEngine, scenario, cancellations=cancellations)
    [skipped] = producer.completions()
    assert skipped.error is not None and skipped.error.code is ErrorCode.SUPERSEDED
    assert skipped.error.message == "answered from a cache; generation stopped before it started"
    assert engine.started == []
    assert consumer.committed == {STANDARD: 1}


def test_a_later_send_of_a_request_is_not_stopped_by_an_earlier_sends_cancellation() -> None:
    # The stream processor cancelled send s1 and died before its reply; after its restart
    # the lookup missed, and send s2 is the request's only answer.
    consumer, producer = FakeConsumer(), FakeProducer()
    cancellations = Cancellations()
    cancellations.add(_answered("s1"))
    consumer.add(STANDARD, [work(speculation="s1"), work(speculation="s2")])

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: len(producer.completions()) == 2)
        stop.set()

    engine = run_worker(consumer, producer, FakeEngine, scenario, cancellations=cancellations)
    skipped, done = producer.completions()
    assert skipped.work.speculation == "s1" and skipped.error is not None
    assert skipped.error.code is ErrorCode.SUPERSEDED
    assert done.work.speculation == "s2" and done.error is None and done.response is not None
    assert len(engine.started) == 1


def test_a_record_of_the_version_before_speculation_ids_is_still_speculative() -> None:
    legacy = json.loads(work(stream=True)) | {"speculative": True}
    item = WorkItem.model_validate_json(json.dumps(legacy))
    assert (item.speculative, item.speculation) == (True, LEGACY_SPECULATION)
    assert Cancel(correlation_id="c", tenant="t", answered=True).stops(item.speculation)
    written = json.loads(item.model_copy(update={"speculation": None}).model_dump_json())
    assert written["speculative"] is False, "old workers read it"
    assert json.loads(WorkItem.model_validate_json(work()).model_dump_json())["speculation"] is None


def _claims(won: bool, asked: list[str]) -> Claim:
    """A claim that an engine wins or loses (Claims.first against Redis)."""

    async def claim(tenant: str, correlation_id: str) -> bool:
        asked.append(correlation_id)
        return won

    return claim


def test_a_speculative_stream_that_lost_its_claim_sends_nothing_but_its_whole_answer() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work(stream=True, speculation="s1")])
    asked = list[str]()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario, claim=_claims(False, asked))
    [done] = producer.completions()
    assert asked == ["standard-0"], "claimed once, before its first piece"
    assert producer.deltas() == [], "its reader gets no piece of it"
    assert done.error is None and done.response is not None, "the whole answer still comes"


def test_a_speculative_stream_the_cache_answered_stops_unseen_as_superseded() -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work(stream=True, speculation="s1")])
    cancellations, asked = Cancellations(), list[str]()
    engine = FakeEngine()
    engine.hold.clear()  # one token, then it waits

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(asked))  # its first token came: it asked for the claim
        answered = _answered("s1")
        assert cancellations.add(answered)
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(
        consumer,
        producer,
        lambda: engine,
        scenario,
        cancellations=cancellations,
        claim=_claims(False, asked),
    )
    [done] = producer.completions()
    assert done.error is not None and done.error.code is ErrorCode.SUPERSEDED
    assert producer.deltas() == []
    assert engine.aborted == [engine.started[0][0]]
    [event] = producer.metering()  # what the engine did is paid for all the same
    assert (event.outcome, event.completion_tokens) == ("superseded", 1)


@pytest.mark.parametrize(
    ("stream", "speculation", "claims"),
    [(True, "s1", 1), (True, None, 0), (False, "s1", 0)],
)
def test_only_a_speculative_stream_is_claimed_and_one_it_won_streams_on(
    stream: bool, speculation: str | None, claims: int
) -> None:
    consumer, producer = FakeConsumer(), FakeProducer()
    consumer.add(STANDARD, [work(stream=stream, speculation=speculation)])
    asked = list[str]()

    async def scenario(worker: Worker, stop: asyncio.Event) -> None:
        await until(lambda: bool(producer.completions()))
        stop.set()

    run_worker(consumer, producer, FakeEngine, scenario, claim=_claims(True, asked))
    [done] = producer.completions()
    assert done.error is None and done.response is not None
    assert len(asked) == claims
    assert bool(producer.deltas()) is stream
