"""Copies kept from a live leader that a more urgent (or streamed) copy took over: if that
copy fails to lead, they go back to the leader whose generation may still answer them,
rather than share a failure of its own; unless that generation ended meanwhile, where
nobody would answer them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest

from schemas.errors import ErrorCode
from schemas.lanes import Lane
from schemas.request import InferenceRequest, RecordRefusedError
from schemas.result import InferenceResult
from schemas.work import WorkItem
from streams.coalesce import Coalescer
from tests.unit.stages import (
    FailingSend,
    FakeSend,
    Pipeline,
    completion,
    last_attempt,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)

Asked = tuple[str, dict[str, Any]]
"""A lane and the body's extra fields."""
BATCH: Asked = ("batch", {})
INTERACTIVE: Asked = ("interactive", {})
STREAMED: Asked = ("interactive", {"stream": True})


def _ask(harness: Pipeline, cid: str, lane: str, **body: Any) -> list[InferenceResult]:
    """The same deterministic question on `lane`: the replies it brought (not the records
    sent elsewhere, which are cleared)."""
    data = json.loads(raw_request(cid=cid, temperature=0, **body)) | {"lane": lane}
    harness.on_request(None, json.dumps(data).encode())
    replies = [result_of(s) for s in harness.send.sent if s.topic == "app.replies"]
    harness.send.sent.clear()
    return replies


def _lead(harness: Pipeline, cid: str, lane: str, **body: Any) -> WorkItem:
    """The work of a copy that leads, its one follower asked after it."""
    data = json.loads(raw_request(cid=cid, temperature=0, **body)) | {"lane": lane}
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    assert _ask(harness, f"{cid}-copy", lane, **body) == []
    return WorkItem.model_validate_json(sent.value)


@pytest.mark.parametrize(
    "error",
    [ConnectionError("broker gone"), RecordRefusedError("llmq.work.x", 2_000_000, 1_000_000)],
    ids=["kafka-away", "refused"],
)
@pytest.mark.parametrize(
    ("first", "then"), [(BATCH, INTERACTIVE), (INTERACTIVE, STREAMED)], ids=["lane", "stream"]
)
def test_copies_go_back_to_the_live_leader_when_the_copy_that_took_over_cannot_send(
    error: Exception, first: Asked, then: Asked
) -> None:
    send = FailingSend("llmq.work.", failures=0, error=error)
    harness = Pipeline(send=send)
    leader = _lead(harness, "first", first[0], **first[1])
    send.failures = 1  # the work of the copy that takes over
    [failed] = _ask(harness, "then", then[0], **then[1])
    assert failed.correlation_id == "then" and failed.error is not None
    leads = Coalescer(harness.table, stale_after_s=600).leader(leader.fingerprint)
    assert leads is not None and leads.correlation_id == "first"
    harness.on_completion(completion(leader, "Same"))
    answered = {result_of(s).correlation_id: result_of(s).text for s in send.sent}
    assert answered == {"first": "Same", "first-copy": "Same"}
    assert harness.store.results["first-copy"].status == "ok"
    assert harness.table == {}


class MeanwhileSend(FakeSend):
    """Refuses the next work sent, as a broker gone, once `meanwhile` ran (and any work sent
    while it runs): another stage's record handled while that send was waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.meanwhile: Callable[[], Awaitable[None]] | None = None
        self.away = False

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        if topic.startswith("llmq.work.") and (self.away or self.meanwhile is not None):
            if self.meanwhile is not None:
                meanwhile, self.meanwhile, self.away = self.meanwhile, None, True
                await meanwhile()
            raise ConnectionError("broker gone")
        await super().__call__(topic, key, value, headers, partition)


@pytest.mark.parametrize("retried", [False, True], ids=["failed-for-good", "retry-not-sent"])
def test_copies_are_not_handed_back_to_a_generation_that_ended_meanwhile(retried: bool) -> None:
    send = MeanwhileSend()
    harness = Pipeline(send=send)
    batch = _lead(harness, "batch", "batch")
    ended = completion(batch if retried else last_attempt(batch), None)
    send.meanwhile = lambda: harness.complete.on_completion(None, ended)
    replies = {r.correlation_id: r for r in _ask(harness, "live", "interactive")}
    assert set(replies) == {"batch", "batch-copy", "live"}, "none left waiting"
    copy = replies["batch-copy"].error
    assert copy is not None and copy.code is ErrorCode.INTERNAL_ERROR and copy.retriable
    assert harness.table == {}


def test_a_takeover_redelivered_keeps_whom_to_hand_the_copies_back_to() -> None:
    """Its process died (or its handling was cancelled) before its work was sent."""
    table: dict[bytes, bytes] = {}
    first = Coalescer(table, stale_after_s=600, epoch="one")
    batch = InferenceRequest.model_validate(
        {
            "correlation_id": "a",
            "lane": "batch",
            "body": {"messages": [{"role": "user", "content": "x"}]},
        }
    )
    live = batch.model_copy(update={"correlation_id": "c", "lane": Lane.INTERACTIVE})
    assert not first.join(batch, "fp", now=100)
    assert first.join(batch.model_copy(update={"correlation_id": "b"}), "fp", now=101)
    assert not first.join(live, "fp", now=102)
    first.abandon("fp", "c")
    reborn = Coalescer(table, stale_after_s=600, epoch="two")
    assert not reborn.join(live, "fp", now=103)
    assert reborn.hand_back("fp", "c")
    back = reborn.leader("fp")
    assert back is not None
    assert (back.correlation_id, back.lane, back.epoch, back.followers) == (
        "a",
        Lane.BATCH,
        "one",
        1,
    )
    assert [w.correlation_id for w in reborn.waiters("fp", 0, 1)] == ["b"]
    assert not reborn.join(live, "fp", now=2_000), "a stale leader is presumed lost"
    assert not reborn.hand_back("fp", "c")
