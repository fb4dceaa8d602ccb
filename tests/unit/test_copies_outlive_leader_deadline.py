"""A leader whose own deadline rules out the fallback or retry of its failed generation: a
copy with time left takes it over, as it takes over a leader that expired, instead of
sharing a failure it had time to mend."""

from __future__ import annotations

import json
import time

import pytest

from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.result import ErrorInfo
from schemas.work import Completion, WorkItem
from tests.unit.stages import TIERED, Pipeline, Sent, completion, raw_request, result_of

pytestmark = pytest.mark.timeout(60)

HOUR = 3600.0


def _ask(harness: Pipeline, cid: str, model: str, deadline: float | None) -> list[Sent]:
    """The same deterministic question for `model` of TIERED: what it sent (cleared)."""
    data = json.loads(raw_request(cid=cid, temperature=0)) | {"model": model}
    if deadline is not None:
        data["deadline"] = deadline
    harness.on_request(None, json.dumps(data).encode())
    sent = list(harness.send.sent)
    harness.send.sent.clear()
    return sent


def _leader_and_copy(harness: Pipeline, model: str, copy_deadline: float | None) -> WorkItem:
    """The leader's work, its copy (asked after it, with `copy_deadline`) waiting on it."""
    [sent] = _ask(harness, "leader", model, time.time() + HOUR)
    assert _ask(harness, "copy", model, copy_deadline) == [], "the copy waits on the leader"
    return WorkItem.model_validate_json(sent.value)


def _due(work: WorkItem, deadline: float) -> WorkItem:
    """`work` with its request's deadline at `deadline`."""
    return work.model_copy(
        update={"request": work.request.model_copy(update={"deadline": deadline})}
    )


def _outcome(
    harness: Pipeline, dead_letters: int = 0
) -> tuple[list[tuple[str | None, ErrorCode | None]], list[Sent]]:
    """The replies (whom, with what error) and the work sent, after a completion; the
    leader's failure, final for it, dead-lettered as `dead_letters` says, and told so."""
    sent = list(harness.send.sent)
    harness.send.sent.clear()
    assert len([s for s in sent if s.topic == "llmq.dlq"]) == dead_letters
    replies = [result_of(s) for s in sent if s.topic == "app.replies"]
    for reply in replies:
        assert reply.error is None or reply.error.message.startswith("failed after 1 attempt")
    told = [(r.correlation_id, None if r.error is None else r.error.code) for r in replies]
    return told, [s for s in sent if s.topic.startswith("llmq.work.")]


def test_a_copy_with_time_left_falls_back_where_the_leader_had_expired() -> None:
    harness = Pipeline(catalog=TIERED)
    leader = _leader_and_copy(harness, "small", time.time() + HOUR)
    # small's engine fails after the leader's deadline passed: no fallback for the leader.
    harness.on_completion(completion(_due(leader, 1.0), None, ErrorCode.ENGINE_ERROR))
    told, [handed] = _outcome(harness, dead_letters=1)
    assert told == [("leader", ErrorCode.ENGINE_ERROR)], "the leader alone is answered"
    work = WorkItem.model_validate_json(handed.value)
    assert handed.topic == "llmq.work.backup.interactive"
    assert (work.request.correlation_id, work.request.lane) == ("copy", Lane.INTERACTIVE)
    assert work.request.deadline is not None and work.request.deadline > time.time()
    assert (work.model, work.route.tried, work.attempt, work.spent_usd) == (
        "backup",
        ["small"],
        1,
        0.0,
    )
    harness.on_completion(completion(work, "Mended"))
    answered, none = _outcome(harness)
    assert (answered, none) == ([("copy", None)], [])
    assert harness.table == {}


def test_a_copy_with_time_left_retries_where_the_leaders_deadline_came_too_soon() -> None:
    harness = Pipeline(catalog=TIERED)
    leader = _leader_and_copy(harness, "big", None)  # big has no fallback
    failed = Completion.model_validate_json(completion(_due(leader, time.time() + 60), None))
    busy = ErrorInfo(code=ErrorCode.ENGINE_ERROR, message="busy", retriable=True, retry_after_s=100)
    harness.on_completion(failed.model_copy(update={"error": busy}).model_dump_json().encode())
    told, [handed] = _outcome(harness, dead_letters=1)
    assert told == [("leader", ErrorCode.ENGINE_ERROR)]
    work = WorkItem.model_validate_json(handed.value)
    assert handed.topic == "llmq.work.big.interactive"
    assert (work.request.correlation_id, work.request.deadline, work.attempt) == ("copy", None, 2)
    assert work.not_before is not None and work.not_before >= time.time() + 99


def test_a_copy_whose_own_deadline_rules_it_out_too_shares_the_failure() -> None:
    harness = Pipeline(catalog=TIERED)
    leader = _leader_and_copy(harness, "big", time.time() + 90)
    failed = Completion.model_validate_json(completion(_due(leader, time.time() + 60), None))
    busy = ErrorInfo(code=ErrorCode.ENGINE_ERROR, message="busy", retriable=True, retry_after_s=100)
    harness.on_completion(failed.model_copy(update={"error": busy}).model_dump_json().encode())
    sent = list(harness.send.sent)
    assert [s.topic for s in sent] == ["llmq.dlq", "app.replies", "app.replies"]
    assert {result_of(s).correlation_id for s in sent[1:]} == {"leader", "copy"}
    assert harness.table == {}
