"""Coalescing across lanes and streams: a copy never waits behind a less urgent lane's
backlog (a batch line's, hours long), nor, streamed, on a generation that shows no pieces; it
leads a generation of its own, and every copy is answered once, whichever answers first."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.names import DLQ, work_topic
from schemas.request import InferenceRequest
from schemas.work import WorkItem
from streams.coalesce import Coalescer, Leader
from tests.unit.stages import (
    MODEL,
    Pipeline,
    completion,
    last_attempt,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def harness() -> Pipeline:
    return Pipeline()


def _ask(
    harness: Pipeline, cid: str, lane: str, deadline: float | None = None, **body: Any
) -> WorkItem | None:
    """The same deterministic question on `lane`: the work record it sent (checked to be on
    its lane's topic), or None when it follows a generation in flight."""
    raw = raw_request(cid=cid, temperature=0, **body)
    data = json.loads(raw) | {"lane": lane, "deadline": deadline}
    harness.on_request(None, json.dumps(data).encode())
    sent = [s for s in harness.send.sent if s.topic.startswith("llmq.work.")]
    harness.send.sent.clear()
    if not sent:
        return None
    [record] = sent
    work = WorkItem.model_validate_json(record.value)
    assert record.topic == work_topic(MODEL, work.request.lane)
    return work


def _answered(harness: Pipeline, work: WorkItem, text: str | None = "Same") -> list[str]:
    """Who the completion of `work` answered (its text, or a failure for good)."""
    outcome = completion(work, text) if text is not None else completion(last_attempt(work), None)
    harness.on_completion(outcome)
    answered = [result_of(s).correlation_id or "" for s in harness.send.sent if s.topic != DLQ]
    harness.send.sent.clear()
    return answered


@pytest.mark.parametrize("first", ["interactive", "batch"])
def test_an_interactive_copy_of_a_batch_generation_leads_its_own_and_each_copy_is_answered_once(
    harness: Pipeline, first: str
) -> None:
    batch = _ask(harness, "batch-0", "batch")
    assert batch is not None
    assert _ask(harness, "batch-1", "batch") is None
    live = _ask(harness, "live-0", "interactive")
    assert live is not None, "an interactive copy does not wait behind the batch backlog"
    assert live.request.correlation_id == "live-0"
    assert _ask(harness, "live-1", "interactive") is None, "it follows the interactive one"
    one, other = (live, batch) if first == "interactive" else (batch, live)
    answered = _answered(harness, one)
    # Whichever answers first answers every copy but the other generation's own request.
    assert sorted(answered) == sorted(
        {"batch-0", "batch-1", "live-0", "live-1"} - {other.request.correlation_id}
    )
    assert harness.table == {}
    assert harness.store.answers[live.fingerprint].choices[0].message.content == "Same"
    answered += _answered(harness, other)
    assert Counter(answered) == Counter(["batch-0", "batch-1", "live-0", "live-1"])
    assert harness.table == {}


def test_a_batch_generation_that_fails_tells_its_own_request_alone(harness: Pipeline) -> None:
    batch = _ask(harness, "batch-0", "batch")
    assert batch is not None
    assert _ask(harness, "batch-1", "batch") is None
    live = _ask(harness, "live-0", "interactive")
    assert live is not None
    assert _answered(harness, batch, None) == ["batch-0"]
    assert sorted(_answered(harness, live)) == ["batch-1", "live-0"]
    assert harness.table == {}


def _promoted(harness: Pipeline, leader: WorkItem) -> WorkItem:
    """The work a copy leads once `leader`'s client left."""
    harness.on_completion(completion(leader, None, ErrorCode.CANCELLED))
    [record] = [s for s in harness.send.sent if s.topic.startswith("llmq.work.")]
    harness.send.sent.clear()
    return WorkItem.model_validate_json(record.value)


def test_a_copy_more_urgent_than_a_promoted_generation_leads_its_own(harness: Pipeline) -> None:
    """The interactive leader's client left: its batch copy leads on the batch lane."""
    leader = _ask(harness, "live-0", "interactive")
    assert leader is not None
    assert _ask(harness, "batch-0", "batch", deadline=4_000_000_000.0) is None
    assert _ask(harness, "batch-1", "batch", deadline=3_000_000_000.0) is None
    promoted = _promoted(harness, leader)
    assert (promoted.request.correlation_id, promoted.request.lane) == ("batch-0", Lane.BATCH)
    live = _ask(harness, "live-1", "interactive")
    assert live is not None, "not behind the batch backlog"
    assert sorted(_answered(harness, live)) == ["batch-1", "live-1"]
    assert _answered(harness, promoted) == ["batch-0"]
    assert harness.table == {}


def test_a_copy_as_urgent_as_a_promoted_generation_follows_it(harness: Pipeline) -> None:
    """The batch copy, whose deadline comes last, leads on the interactive lane of another."""
    leader = _ask(harness, "live-0", "interactive")
    assert leader is not None
    assert _ask(harness, "live-1", "interactive", deadline=3_000_000_000.0) is None
    assert _ask(harness, "batch-0", "batch", deadline=4_000_000_000.0) is None
    promoted = _promoted(harness, leader)
    assert (promoted.request.correlation_id, promoted.request.lane) == (
        "batch-0",
        Lane.INTERACTIVE,
    )
    assert _ask(harness, "live-2", "interactive") is None
    assert sorted(_answered(harness, promoted)) == ["batch-0", "live-1", "live-2"]
    assert harness.table == {}


def test_an_entry_written_before_leaders_kept_their_lane_reads_as_batch() -> None:
    table = {b"fp": json.dumps({"correlation_id": "a", "since": 100.0, "epoch": "x"}).encode()}
    coalescer = Coalescer(table, stale_after_s=10, epoch="x")
    request = InferenceRequest.model_validate(
        {
            "correlation_id": "b",
            "lane": "batch",
            "body": {"messages": [{"role": "user", "content": "x"}]},
        }
    )
    assert coalescer.join(request, "fp", now=101)
    standard = request.model_copy(update={"correlation_id": "c", "lane": Lane.STANDARD})
    assert not coalescer.join(standard, "fp", now=102)
    assert coalescer.followers("fp") == 1


def _request(cid: str, lane: str) -> InferenceRequest:
    body = {"messages": [{"role": "user", "content": "x"}]}
    return InferenceRequest.model_validate({"correlation_id": cid, "lane": lane, "body": body})


def test_the_end_of_a_generation_forgets_it_only_where_the_leader_took_it_over() -> None:
    """It comes for a failure whose copies another request leads, or nobody does (a cache
    answered them; the completion is unreadable): with no leader, or one that took over
    nobody, it leaves the table alone. Raising there, it failed the completion's handling."""
    table: dict[bytes, bytes] = {}
    coalescer = Coalescer(table, stale_after_s=10, epoch="x")
    coalescer.ended("fp", "batch-0")
    assert table == {}
    assert not coalescer.join(_request("batch-0", "batch"), "fp", now=100)
    coalescer.ended("fp", "batch-0")
    assert coalescer.leader("fp") == Leader(correlation_id="batch-0", since=100, epoch="x")
    assert not coalescer.join(_request("live-0", "interactive"), "fp", now=101)
    coalescer.ended("fp", "live-0")
    leader = coalescer.leader("fp")
    assert leader is not None and leader.replaced is not None, "not the one it took over"
    coalescer.ended("fp", "batch-0")
    assert coalescer.leader("fp") == leader.model_copy(update={"replaced": None})


def test_a_streamed_copy_of_a_generation_that_does_not_stream_leads_its_own(
    harness: Pipeline,
) -> None:
    """It would show nothing until the whole answer; a streamed copy after it follows it."""
    plain = _ask(harness, "plain-0", "interactive")
    assert plain is not None
    live = _ask(harness, "live-0", "interactive", stream=True)
    assert live is not None, "a streamed copy does not follow a generation without pieces"
    assert live.request.body.stream
    assert _ask(harness, "live-1", "interactive", stream=True) is None
    assert _ask(harness, "plain-1", "interactive") is None
    answered = _answered(harness, live) + _answered(harness, plain)
    assert Counter(answered) == Counter(["plain-0", "plain-1", "live-0", "live-1"])
    assert harness.table == {}


def test_a_more_urgent_copy_follows_a_generation_that_streams(harness: Pipeline) -> None:
    """Its followers may be showing its pieces: another generation's answer would not go on
    from them."""
    standard = _ask(harness, "std-0", "standard", stream=True)
    assert standard is not None
    assert _ask(harness, "std-1", "standard", stream=True) is None
    assert _ask(harness, "live-0", "interactive", stream=True) is None
    assert Counter(_answered(harness, standard)) == Counter(["std-0", "std-1", "live-0"])
