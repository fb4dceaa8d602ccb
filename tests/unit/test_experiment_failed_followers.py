"""A coalesced copy of an A/B test's request is told its generation's failure, or that its
deadline passed, on that generation's route: the test counts the error in its arm, as it
counts the answer of a copy in time (an error without a route dropped out of the arm, and
its error rate read low)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.result import InferenceResult, Timings
from schemas.route import Route
from schemas.work import WorkItem
from streams import replies
from streams.coalesce import Coalescer, Waiter
from streams.dedupe import fail_copies
from streams.outbox import Outbox
from tests.unit.stages import (
    FailingSend,
    FakeSend,
    FakeStore,
    Pipeline,
    admitted,
    completion,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)

AB = Catalog.model_validate(
    {
        "default": "small",
        "models": [{"name": "small", "source": "/m/small", "tier": 1}],
        "experiments": [
            {
                "name": "ab",
                "model": "small",
                "share": 1.0,
                "arms": [{"name": "a", "model": "small"}, {"name": "b", "model": "small"}],
            }
        ],
    }
)
"""Every tenant takes part in experiment ab."""
ROUTE = Route(requested="small", chain=["small"], experiment="ab", arm="a")


def _routes(sent: list[InferenceResult]) -> dict[str, tuple[str, Route | None]]:
    """Each reply's error code and route, by correlation id."""
    return {
        r.correlation_id or "": (r.error.code.value if r.error else "ok", r.route) for r in sent
    }


def _ask(harness: Pipeline, cid: str) -> WorkItem | None:
    """A copy of the one question (deterministic, so cacheable): the work it sent, if any."""
    harness.on_request(None, raw_request(cid=cid, temperature=0))
    sent = [s for s in harness.send.sent if s.topic.startswith("llmq.work.")]
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent[0].value) if sent else None


def test_an_expired_follower_of_a_leader_keeps_its_route() -> None:
    now = time.time()
    leader = InferenceResult(
        correlation_id="L",
        tenant="acme",
        status="ok",
        route=ROUTE,
        timings=Timings(),
        finished_at=now,
    )
    late = Waiter(
        correlation_id="F", tenant="acme", reply_to=None, created_at=now - 2, deadline=now - 1
    )
    result = replies.for_follower(leader, late, now)
    assert (result.status, result.error and result.error.code) == ("error", ErrorCode.EXPIRED)
    assert result.route == ROUTE


def test_the_copies_of_a_leader_that_failed_before_its_generation_keep_its_route() -> None:
    """dedupe.fail_copies: the leader's handling failed (the Guard answers it)."""
    work = admitted(raw_request(cid="lead", temperature=0)).model_copy(update={"route": ROUTE})
    copy = work.request.model_copy(update={"correlation_id": "copy"})
    coalescer, send = Coalescer({}, stale_after_s=600), FakeSend()
    assert not coalescer.join(work.request, work.fingerprint)
    assert coalescer.join(copy, work.fingerprint)
    failure = LlmqError(ErrorCode.INTERNAL_ERROR, "boom")
    asyncio.run(fail_copies(coalescer, Outbox(FakeStore(), send), work, failure))
    assert _routes([result_of(s) for s in send.sent]) == {"copy": ("internal_error", ROUTE)}


def test_the_copies_of_an_unreadable_completion_keep_its_route() -> None:
    harness = Pipeline(catalog=AB)
    work = _ask(harness, "lead")
    assert work is not None and work.route.experiment == "ab"
    assert _ask(harness, "copy") is None
    record = json.loads(completion(work))
    record["work"]["request"]["body"]["some_newer_field"] = 40  # a newer llmq's
    key = work.fingerprint.encode()
    asyncio.run(harness.complete.on_completion(key, json.dumps(record).encode()))
    replied = _routes([result_of(s) for s in harness.send.sent if s.topic == "app.replies"])
    assert replied["copy"] == ("internal_error", work.route)
    assert replied["lead"] == ("internal_error", work.route), "the leader in its arm too"


def test_the_copies_of_a_cancelled_leader_that_cannot_lead_anew_keep_its_route() -> None:
    """Complete._promote: one copy's deadline passed (expired), the other's new generation
    cannot be sent (it shares that failure)."""
    send = FailingSend("llmq.work.", failures=0)
    harness = Pipeline(catalog=AB, send=send)
    work = _ask(harness, "lead")
    assert work is not None
    for cid in ("late", "copy"):
        assert _ask(harness, cid) is None
    key = f"{work.fingerprint}/0".encode()
    late = Waiter.model_validate_json(harness.table[key])
    assert late.correlation_id == "late"
    harness.table[key] = (
        late.model_copy(update={"deadline": time.time() - 1}).model_dump_json().encode()
    )
    send.failures = 1  # the new leader's work
    harness.on_completion(completion(work, None, ErrorCode.CANCELLED))
    replied = _routes([result_of(s) for s in send.sent if s.topic == "app.replies"])
    assert replied == {
        "lead": ("cancelled", work.route),
        "late": ("expired", work.route),
        "copy": ("internal_error", work.route),
    }
