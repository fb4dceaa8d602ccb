"""Cancellations: a running generation is aborted, later work skipped, old ones forgotten."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from schemas.names import CANCELS
from schemas.stream import Cancel
from schemas.work import WorkItem
from tests.unit.worker_fakes import until, work
from workers import cancels
from workers.cancels import Cancellations, follow

pytestmark = pytest.mark.timeout(30)


def _cancel(cid: str, at: float = 1000.0, tenant: str = "t") -> Cancel:
    return Cancel(correlation_id=cid, tenant=tenant, at=at)


def _work(speculation: str | None = None) -> WorkItem:
    """Tenant t's request a, sent with `speculation`."""
    item = WorkItem.model_validate_json(work(speculation=speculation))
    request = item.request.model_copy(update={"tenant": "t", "correlation_id": "a"})
    return item.model_copy(update={"request": request})


def test_a_running_generation_is_aborted() -> None:
    aborted: list[str] = []
    cancellations = Cancellations()
    cancellations.running(_work(), "run-1", lambda: aborted.append("a"))
    assert cancellations.add(_cancel("a"), now=1000.0)
    assert aborted == ["a"]
    cancellations.stopped(_work(), "run-1")
    assert not cancellations.add(_cancel("a"), now=1000.0)  # nothing runs any more
    assert aborted == ["a"]


def test_work_that_comes_later_is_known_as_cancelled_per_tenant() -> None:
    cancellations = Cancellations()
    cancellations.add(_cancel("a"), now=1000.0)
    assert cancellations.cancelled("t", "a")
    assert not cancellations.cancelled("other", "a")
    assert not cancellations.cancelled("t", "b")


def test_old_cancellations_and_the_oldest_past_the_limit_are_forgotten() -> None:
    cancellations = Cancellations(memory_s=60, limit=2)
    cancellations.add(_cancel("old", at=900.0), now=1000.0)
    assert not cancellations.cancelled("t", "old")  # older than memory_s
    for cid in ("a", "b", "c"):
        cancellations.add(_cancel(cid), now=1000.0)
    assert [cancellations.cancelled("t", c) is not None for c in ("a", "b", "c")] == [
        False,
        True,
        True,
    ]


def test_a_request_a_cache_answered_stays_answered_whatever_cancels_it_later() -> None:
    cancellations = Cancellations()
    answered = Cancel(correlation_id="a", tenant="t", at=1000.0, answered=True)
    cancellations.add(answered, now=1000.0)
    cancellations.add(_cancel("a", at=1001.0), now=1001.0)  # its client left afterwards
    cancel = cancellations.cancelled("t", "a")
    assert cancel is not None and cancel.answered
    cancellations.add(_cancel("b"), now=1000.0)
    cancellations.add(Cancel(correlation_id="b", tenant="t", at=1000.0, answered=True), now=1000.0)
    later = cancellations.cancelled("t", "b")
    assert later is not None and later.answered


def _answered(speculation: str, at: float = 1000.0) -> Cancel:
    return Cancel(correlation_id="a", tenant="t", at=at, answered=True, speculation=speculation)


def test_a_caches_cancellation_stops_only_the_speculative_send_it_names() -> None:
    cancellations = Cancellations()
    aborted: list[str] = []
    cancellations.running(_work("s2"), "run-2", lambda: aborted.append("s2"))
    assert not cancellations.add(_answered("s1"), now=1000.0), "s2 runs on"
    assert aborted == []
    first = cancellations.stopping(_work("s1"))
    assert first is not None and first.answered
    assert cancellations.stopping(_work("s2")) is None
    assert cancellations.stopping(_work()) is None, "nor a send that was not speculative"
    assert cancellations.add(_answered("s2"), now=1000.0)
    assert aborted == ["s2"]


def test_a_clients_cancellation_stops_every_send_and_answered_ones_stay_answered() -> None:
    cancellations = Cancellations()
    cancellations.add(_answered("s1"), now=1000.0)
    cancellations.add(_cancel("a", at=1001.0), now=1001.0)
    cancellations.add(_cancel("a", at=1002.0), now=1002.0)  # a second one replaces the first
    first, later = cancellations.cancelled("t", "a", "s1"), cancellations.cancelled("t", "a", "s2")
    assert first is not None and first.answered
    assert later is not None and not later.answered and later.at == 1002.0
    cancellations.add(_answered("s1", at=1003.0), now=1003.0)  # sent again (a retry)
    again = cancellations.cancelled("t", "a", "s1")
    assert again is not None and again.at == 1003.0


def test_a_request_is_forgotten_when_its_latest_cancellation_is_old() -> None:
    cancellations = Cancellations(memory_s=60)
    cancellations.add(_answered("s1", at=900.0), now=900.0)
    cancellations.add(_cancel("a", at=950.0), now=950.0)
    assert cancellations.cancelled("t", "a", "s1") is not None
    cancellations.add(_cancel("b", at=1000.0), now=1000.0)
    assert cancellations.cancelled("t", "a", "s1") is not None, "its latest is 50 s old"
    cancellations.add(_cancel("b", at=1011.0), now=1011.0)
    assert cancellations.cancelled("t", "a", "s1") is None


def test_two_sends_running_at_once_are_each_stopped_by_their_own_cancellations() -> None:
    cancellations = Cancellations()
    aborted: list[str] = []
    first, resent = _work("s1"), _work("s2")
    cancellations.running(first, "run-1", lambda: aborted.append("s1"))
    cancellations.running(resent, "run-2", lambda: aborted.append("s2"))
    assert cancellations.add(_answered("s1"), now=1000.0)
    assert aborted == ["s1"]
    cancellations.stopped(first, "run-1")
    assert cancellations.add(_cancel("a", at=1001.0), now=1001.0), "the resend still runs"
    assert aborted == ["s1", "s2"]
    cancellations.stopped(resent, "run-2")
    assert not cancellations.add(_cancel("a", at=1002.0), now=1002.0)


class FailingCancels:
    """llmq.cancels, one partition holding `held`, whose first `failures` look-ups of an
    offset by time fail as they do while a broker fails over (`fetches`: whose fetches
    fail instead, as without the right to read)."""

    def __init__(self, held: Cancel, failures: int = 1, *, fetches: bool = False) -> None:
        self.tp = TopicPartition(CANCELS, 0)
        value = held.model_dump_json().encode()
        self.records = [ConsumerRecord(CANCELS, 0, 0, 0, 0, None, value, None, 0, len(value), [])]
        self.failures = failures
        self.fetches = fetches
        self.looks = 0
        self.asked: list[int] = []
        """The times (Unix ms) each look-up asked offsets for."""

    def assignment(self) -> set[TopicPartition]:
        return {self.tp}

    async def offsets_for_times(self, at: dict[TopicPartition, int]) -> dict[TopicPartition, None]:
        self.looks += 1
        self.asked.extend(at.values())
        if self.looks <= self.failures and not self.fetches:
            raise KafkaTimeoutError
        return dict.fromkeys(at)  # nothing that recent: read from the end

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        pass

    async def getmany(
        self, timeout_ms: int
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.looks <= self.failures and self.fetches:
            raise TopicAuthorizationFailedError
        records, self.records = self.records, []
        if not records:
            await asyncio.sleep(timeout_ms / 1000)
        return {self.tp: records} if records else {}


def _following(consumer: FailingCancels, cancellations: Cancellations) -> asyncio.Task[None]:
    return asyncio.create_task(follow(cast(Any, consumer), cancellations))


def test_a_read_of_the_cancellations_that_fails_is_said_and_started_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ended, it would leave the worker running cancelled requests to their end for good."""
    monkeypatch.setattr(cancels, "FOLLOW_AGAIN_S", (0.0, 0.0))
    cancellations = Cancellations()
    consumer = FailingCancels(_cancel("a", at=time.time()))

    async def run() -> None:
        following = _following(consumer, cancellations)
        await until(lambda: following.done() or cancellations.cancelled("t", "a") is not None)
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    with caplog.at_level(logging.WARNING, logger=cancels.__name__):
        asyncio.run(run())
    assert cancellations.cancelled("t", "a") is not None
    assert consumer.looks == 2
    assert "KafkaTimeoutError" in caplog.text


def test_the_follower_reads_the_cancellations_of_the_last_memory_s() -> None:
    """A worker that (re)starts still skips work cancelled while it was away: read from a
    time ahead (the end), it ran that work to its end, billed for nobody."""
    cancellations = Cancellations(memory_s=600)
    consumer = FailingCancels(_cancel("a", at=time.time()), failures=0)

    async def run() -> None:
        following = _following(consumer, cancellations)
        await until(lambda: cancellations.cancelled("t", "a") is not None)
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    before = time.time()
    asyncio.run(run())
    after = time.time()
    [asked] = consumer.asked
    assert int((before - 600) * 1000) <= asked <= int((after - 600) * 1000)


@pytest.mark.parametrize("fetches", [False, True], ids=["seek", "fetch"])
def test_a_lasting_failure_is_tried_again_ever_less_often(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fetches: bool
) -> None:
    """A right taken away was a warning, and a reread of the last hour, every second (the
    right to read: the seek goes, each fetch fails)."""
    monkeypatch.setattr(cancels, "FOLLOW_AGAIN_S", (0.01, 0.04))
    consumer = FailingCancels(_cancel("a"), failures=1_000, fetches=fetches)

    async def run() -> None:
        following = _following(consumer, Cancellations())
        await until(lambda: consumer.looks >= 5)
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following

    with caplog.at_level(logging.WARNING, logger=cancels.__name__):
        asyncio.run(run())
    pauses = [r.getMessage().rsplit("again in ", 1)[1] for r in caplog.records][:4]
    assert pauses == ["0.01 s", "0.02 s", "0.04 s", "0.04 s"]


def test_a_follower_waiting_to_read_again_ends_at_once_when_cancelled() -> None:
    """The worker's shutdown (SIGTERM) does not wait for the pause."""
    consumer = FailingCancels(_cancel("a"), failures=1_000)

    async def run() -> None:
        following = _following(consumer, Cancellations())
        await until(lambda: consumer.looks > 0)
        following.cancel()
        async with asyncio.timeout(0.5):
            with contextlib.suppress(asyncio.CancelledError):
                await following
        assert following.cancelled()

    asyncio.run(run())
