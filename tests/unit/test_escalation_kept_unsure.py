"""An escalation carries the unsure answer it replaces: the answer where it ends without one."""

from __future__ import annotations

import json

import pytest

from schemas.catalog import Catalog
from schemas.errors import ErrorCode
from schemas.fingerprint import fingerprint
from schemas.work import Completion, WorkItem
from tests.unit.stages import (
    TIERED,
    FakeLedger,
    Pipeline,
    completion,
    last_attempt,
    metered,
    raw_request,
    result_of,
    tiered_work,
)


def _escalated(harness: Pipeline, copies: int = 0) -> WorkItem:
    """An "auto" request (and `copies` coalesced with it) whose small model answered
    "Maybe?" unsure, at a cost of 0.001: the work sent on to the big model."""
    work = tiered_work(harness, "auto")
    for i in range(copies):
        data = json.loads(raw_request(cid=f"t-copy-{i}", temperature=0))
        harness.on_request(None, json.dumps({**data, "model": "auto"}).encode())
    assert harness.send.sent == [], "the copies follow the generation in flight"
    unsure = metered(work, 0.001, "Maybe?").model_copy(update={"mean_logprob": -2.5})
    harness.on_completion(unsure.model_dump_json().encode())
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.big.interactive"
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)


def test_an_escalation_carries_the_unsure_answer_outside_its_fingerprint() -> None:
    harness = Pipeline(catalog=TIERED)
    work = tiered_work(harness, "auto")
    unsure = Completion.model_validate_json(completion(work, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [sent] = harness.send.sent
    escalated = WorkItem.model_validate_json(sent.value)
    assert escalated.unsure is not None
    assert (escalated.unsure.model, escalated.unsure.mean_logprob) == ("small", -2.5)
    assert escalated.unsure.response == unsure.response
    assert sent.key == work.fingerprint.encode()
    assert escalated.fingerprint == work.fingerprint
    assert fingerprint(escalated.request, TIERED.cache_scope(escalated.route)) == work.fingerprint


def test_an_expired_escalation_answers_the_request_and_its_copies_with_the_unsure_one() -> None:
    """A deadline that passed while the big model's lane was busy: the error expired lost
    the small model's answer, which past the deadline would have stood."""
    ledger = FakeLedger()
    harness = Pipeline(catalog=TIERED, ledger=ledger)
    escalated = _escalated(harness, copies=1)
    late = escalated.request.model_copy(update={"deadline": 1.0})
    expired = Completion.model_validate_json(
        completion(escalated.model_copy(update={"request": late}), None, ErrorCode.EXPIRED)
    )
    harness.on_completion(expired.model_dump_json().encode())
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert set(results) == {"t-1", "t-copy-0"}, "answered, not led anew on the big model"
    for result in results.values():
        assert (result.status, result.text, result.model_used) == ("ok", "Maybe?", "small")
        assert result.route is not None and result.route.escalated
    assert results["t-1"].cost_usd == pytest.approx(0.001), "counted once, not lost"
    assert results["t-copy-0"].cost_usd == 0.0
    assert ledger.calls == ["settle t-1 0.001", "release t-1", "release t-copy-0"]
    assert harness.table == {}
    assert harness.store.answers == {}, "a copy with time to spare escalates, not hits it"


def test_an_escalation_that_failed_for_good_answers_with_the_unsure_answer() -> None:
    """big fails on its last attempt and has no fallback above small's tier (backup is
    small's): an unsure answer is better than none, and is not dead-lettered."""
    harness = Pipeline(catalog=TIERED)
    escalated = _escalated(harness)
    harness.on_completion(completion(last_attempt(escalated), None, ErrorCode.ENGINE_ERROR))
    [reply] = harness.send.sent
    assert reply.topic == "app.replies"
    result = result_of(reply)
    assert (result.status, result.text, result.model_used) == ("ok", "Maybe?", "small")
    assert result.route is not None and result.route.tried == ["small"]


def test_an_escalation_that_answered_answers_with_its_own_answer() -> None:
    harness = Pipeline(catalog=TIERED)
    escalated = _escalated(harness, copies=1)
    sure = metered(escalated, 0.01, "Paris.").model_copy(update={"mean_logprob": -0.1})
    harness.on_completion(sure.model_dump_json().encode())
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert set(results) == {"t-1", "t-copy-0"}
    assert all(
        (r.status, r.text, r.model_used) == ("ok", "Paris.", "big") for r in results.values()
    )
    assert results["t-1"].cost_usd == pytest.approx(0.011)


def test_a_cancelled_escalation_leaves_its_copies_to_a_new_leader() -> None:
    harness = Pipeline(catalog=TIERED)
    escalated = _escalated(harness, copies=1)
    harness.on_completion(completion(escalated, None, ErrorCode.CANCELLED))
    reply, handed = harness.send.sent
    cancelled = result_of(reply)
    assert cancelled.error is not None and cancelled.error.code is ErrorCode.CANCELLED
    promoted = WorkItem.model_validate_json(handed.value)
    assert handed.topic == "llmq.work.big.interactive"
    assert promoted.request.correlation_id == "t-copy-0"
    assert promoted.unsure == escalated.unsure


THREE_TIERS = Catalog.model_validate(
    {
        "default": "small",
        "routing": {"cascade": True, "escalate_below": -1.0},
        "models": [
            {"name": "small", "source": "/m/small", "tier": 1},
            {"name": "mid", "source": "/m/mid", "tier": 2},
            {"name": "big", "source": "/m/big", "tier": 3},
        ],
    }
)


def test_an_escalation_carries_the_latest_unsure_answer() -> None:
    """The answer of the higher tier, which the cascade judged after the first."""
    harness = Pipeline(catalog=THREE_TIERS)
    work = tiered_work(harness, "auto")
    for text in ("Maybe?", "Perhaps Paris?"):
        unsure = Completion.model_validate_json(completion(work, text)).model_copy(
            update={"mean_logprob": -2.5}
        )
        harness.on_completion(unsure.model_dump_json().encode())
        [sent] = harness.send.sent
        harness.send.sent.clear()
        work = WorkItem.model_validate_json(sent.value)
    assert work.model == "big"
    harness.on_completion(completion(work, None, ErrorCode.EXPIRED))
    [reply] = harness.send.sent
    result = result_of(reply)
    assert (result.status, result.text, result.model_used) == ("ok", "Perhaps Paris?", "mid")
