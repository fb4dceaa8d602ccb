"""Budget holds as the stages use them: a request's worst case, settled before its answer and
released by it, whatever the answer is (tests/integration/test_budgets_redis.py runs the
Redis side)."""

from __future__ import annotations

import json
import time

import pytest
from aiokafka.errors import KafkaTimeoutError

from schemas.catalog import Catalog
from schemas.names import DLQ
from schemas.request import TEMPLATE_TOKENS, TEMPLATE_TOKENS_PER_MESSAGE
from schemas.work import WorkItem
from streams.budget import HOLD_AFTER_DEADLINE_S, HOLD_S, worst_case
from tests.unit.stages import (
    FailingSend,
    FakeLedger,
    Pipeline,
    admitted,
    metered,
    raw_request,
    result_of,
)

PRICED = Catalog.model_validate(
    {
        "default": "small",
        "routing": {"cascade": True, "escalate_below": -1.0},
        "models": [
            {
                "name": "small",
                "source": "/m/small",
                "tier": 1,
                "max_model_len": 512,
                "price_prompt_per_mtok": 1.0,
                "price_completion_per_mtok": 2.0,
            },
            {
                "name": "big",
                "source": "/m/big",
                "tier": 2,
                "price_prompt_per_mtok": 10.0,
                "price_completion_per_mtok": 20.0,
            },
        ],
    }
)


def test_the_worst_case_covers_every_model_still_ahead_at_its_prices() -> None:
    raw = json.loads(raw_request(max_tokens=1000))
    work = admitted(json.dumps({**raw, "model": "auto"}).encode())
    work = WorkItem.model_validate(
        {**work.model_dump(), "route": {**work.route.model_dump(), "chain": ["small", "big"]}}
    )
    prompt = len(b"Hi") + TEMPLATE_TOKENS + TEMPLATE_TOKENS_PER_MESSAGE
    hold = worst_case(work, PRICED, now=100.0)
    small = prompt * 1.0 + 512 * 2.0  # max_tokens capped by small's context
    big = prompt * 10.0 + 1000 * 20.0
    assert hold.usd == pytest.approx((small + big) / 1e6)
    assert (hold.id, hold.until) == ("req-1", 100.0 + HOLD_S)
    after_escalation = work.model_copy(update={"route": work.route.advance(escalated=True)})
    assert worst_case(after_escalation, PRICED).usd == pytest.approx(big / 1e6)


def test_a_hold_lasts_past_the_deadline_and_counts_every_byte() -> None:
    raw = json.loads(raw_request())
    deadline = time.time() + 3600
    raw["deadline"] = deadline
    raw["body"]["messages"] = [{"role": "user", "content": "Grüße"}]
    work = admitted(json.dumps(raw).encode())
    assert work.request.body.prompt_token_bound() == 7 + TEMPLATE_TOKENS + 16
    assert worst_case(work, Catalog.builtin()).until == deadline + HOLD_AFTER_DEADLINE_S


def test_a_generation_is_settled_before_its_answer_releases_the_hold() -> None:
    ledger = FakeLedger()
    harness = Pipeline(catalog=PRICED, ledger=ledger)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    harness.on_request(None, raw_request(cid="t-2", temperature=0))  # coalesced
    [sent] = harness.send.sent
    work = WorkItem.model_validate_json(sent.value)
    harness.send.sent.clear()
    harness.on_completion(metered(work, 0.25).model_dump_json().encode())
    assert ledger.calls[0] == "settle t-1 0.25"
    assert sorted(ledger.calls[1:]) == ["release t-1", "release t-2"]
    assert {result_of(s).correlation_id for s in harness.send.sent} == {"t-1", "t-2"}


def test_a_cached_answer_releases_its_hold_and_a_refusal_at_the_door_releases_none() -> None:
    """An invalid record placed no hold: one under its correlation id is another record's."""
    ledger = FakeLedger()
    harness = Pipeline(catalog=PRICED, ledger=ledger)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    work = WorkItem.model_validate_json(harness.send.sent.pop().value)
    harness.on_completion(metered(work, 0.25).model_dump_json().encode())
    harness.on_request(None, raw_request(cid="t-2", temperature=0))  # the exact cache answers
    harness.on_request(None, raw_request(cid="t-3", temperature=0, max_tokens=0))  # invalid
    assert ledger.calls == ["settle t-1 0.25", "release t-1", "release t-2"]


def test_a_refusal_at_the_door_whose_dead_letter_kafka_times_out_still_releases_none() -> None:
    """The dead letter is sent again; before, its failure reached the Guard, which
    dead-lettered the record a second time and answered with a release."""
    ledger = FakeLedger()
    send = FailingSend(DLQ, 1, KafkaTimeoutError())
    harness = Pipeline(catalog=PRICED, ledger=ledger, send=send)
    harness.on_request(None, raw_request(cid="t-3", temperature=0, max_tokens=0))  # invalid
    assert [s.topic for s in send.sent] == [DLQ, "app.replies"]
    assert ledger.calls == []
