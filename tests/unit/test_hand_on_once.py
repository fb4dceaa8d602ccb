"""Work handed on from a completion (an escalation, a fallback, a retry) is marked once sent:
the completion read again does not send it again, but a send cut short is not marked (a
request never answered is worse than a second generation), and a repeat of the request,
sent anew, hands on as its own. tests/integration/test_hand_on_once_redis.py runs it on
Redis, with budgets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

import pytest

from schemas.work import Completion, WorkItem
from tests.unit.stages import (
    TIERED,
    FakeLedger,
    FakeSend,
    Pipeline,
    completion,
    metered,
    raw_request,
    tiered_work,
)

ESCALATION = "llmq.work.big.interactive"


def _unsure(work: WorkItem) -> bytes:
    """Small's answer to `work`, too unsure to stand: it escalates to big."""
    done: Completion = metered(work, 0.001, "Maybe?").model_copy(update={"mean_logprob": -2.5})
    return done.model_dump_json().encode()


class CutShort(FakeSend):
    """Cancels the first send of an escalation, as a rebalance cancels an actor."""

    def __init__(self) -> None:
        super().__init__()
        self.cut = False

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        if topic == ESCALATION and not self.cut:
            self.cut = True
            raise asyncio.CancelledError


def test_a_completion_read_again_escalates_once() -> None:
    harness = Pipeline(catalog=TIERED)
    unsure = _unsure(tiered_work(harness, "auto"))
    harness.on_completion(unsure)
    harness.on_completion(unsure)
    assert [s.topic for s in harness.send.sent] == [ESCALATION]


def test_an_escalation_whose_send_was_cut_short_is_sent_when_read_again() -> None:
    harness = Pipeline(catalog=TIERED, send=CutShort())
    unsure = _unsure(tiered_work(harness, "auto"))
    with pytest.raises(asyncio.CancelledError):
        harness.on_completion(unsure)
    assert harness.send.sent == []
    harness.on_completion(unsure)
    assert [s.topic for s in harness.send.sent] == [ESCALATION]


def test_a_repeat_of_the_request_sent_anew_escalates_as_its_own() -> None:
    harness = Pipeline(catalog=TIERED)
    work = tiered_work(harness, "auto")
    assert work.sent_at is not None
    harness.on_completion(_unsure(work))
    repeat = work.model_copy(update={"sent_at": work.sent_at + 1})
    harness.on_completion(_unsure(repeat))
    assert [s.topic for s in harness.send.sent] == [ESCALATION, ESCALATION]


def test_a_failure_read_again_past_its_retry_budget_is_still_handed_on_not_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Read again an hour later (a restart), the completion would decide otherwise (no retry:
    its budget is spent) and answer its failure, releasing the hold the retry it sent runs
    on: it is done once handed on."""
    ledger = FakeLedger()
    harness = Pipeline(ledger=ledger)
    harness.on_request(None, raw_request(cid="r-1"))
    [sent] = harness.send.sent
    harness.send.sent.clear()
    failed = completion(WorkItem.model_validate_json(sent.value), None)  # engine_error
    harness.on_completion(failed)
    assert [s.topic for s in harness.send.sent] == [sent.topic]  # the retry
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    harness.on_completion(failed)
    assert [s.topic for s in harness.send.sent] == [sent.topic]  # no reply, no dead letter
    assert not any(call.startswith("release") for call in ledger.calls)
