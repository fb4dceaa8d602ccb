"""The engine is asked for logprobs the app did not ask for only where the answer may
escalate (a higher tier next), and a server that refuses llmq's own logprobs answers
without them, where it would fail the generation as the request's fault."""

from __future__ import annotations

import asyncio
import json

import pytest

from schemas.errors import ErrorCode
from schemas.route import Route
from schemas.work import CascadeBody, Completion, WorkItem
from streams.router import may_escalate
from tests.unit.openai_server import BODY, collect, engine, failure, ok, refusing, running
from tests.unit.stages import TIERED, Pipeline, completion, raw_request
from tests.unit.worker_fakes import MODEL, FakeEngine, serve_one, work

pytestmark = pytest.mark.timeout(60)

AT_THE_TOP = Route(
    requested="auto",
    chain=["small", "big", "backup"],
    cascade=True,
    tried=["small"],
    escalated=True,
)
"""Escalated to TIERED's top tier: only a fallback of a lower tier is left."""


def test_an_answer_escalates_only_to_a_higher_tier_next() -> None:
    assert may_escalate(AT_THE_TOP.model_copy(update={"tried": [], "escalated": False}), TIERED)
    assert not may_escalate(AT_THE_TOP, TIERED)
    assert not may_escalate(Route(requested="small", chain=["small", "big"]), TIERED)


def test_an_escalation_to_the_top_tier_is_sent_saying_it_cannot_escalate() -> None:
    harness = Pipeline(catalog=TIERED)
    data = json.loads(raw_request(cid="t-1", temperature=0)) | {"model": "auto"}
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    first = WorkItem.model_validate_json(sent.value)
    unsure = Completion.model_validate_json(completion(first, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [sent] = harness.send.sent
    escalated = WorkItem.model_validate_json(sent.value)
    assert (escalated.model, escalated.route.remaining) == ("big", ["backup"])
    assert escalated.may_escalate is False


@pytest.mark.parametrize(
    ("may", "asked"), [(False, False), (True, True), (None, True)], ids=["no", "yes", "unsaid"]
)
def test_the_worker_asks_for_logprobs_only_where_the_answer_may_escalate(
    may: bool | None, asked: bool
) -> None:
    """Unsaid (admission, a writer before the field): a cascading route with a model left."""
    fake = FakeEngine()
    route = Route(requested="auto", chain=[MODEL, "backup"], cascade=True)
    serve_one(work(route=route, may_escalate=may), fake)
    [(_, body, _)] = fake.started
    assert body.logprobs is asked
    assert isinstance(body, CascadeBody) is asked


def test_logprobs_llmq_asked_for_are_left_out_once_refused_and_the_answer_stands() -> None:
    async def scenario() -> None:
        async with running(refusing("logprobs", then=ok())) as (server, url):
            eng = engine(url, threshold=1)
            first = await collect(eng, CascadeBody.of(BODY))
            second = await collect(eng, CascadeBody.of(BODY))
        assert "".join(s.text for s in first) == "".join(s.text for s in second) == "Hi there"
        assert [b.get("logprobs") for b in server.bodies] == [True, None, None]

    asyncio.run(scenario())


def test_logprobs_the_app_asked_for_and_the_server_refuses_are_the_requests_fault() -> None:
    async def scenario() -> None:
        async with running(refusing("logprobs", then=ok())) as (server, url):
            eng = engine(url, threshold=1)
            await collect(eng, CascadeBody.of(BODY))  # llmq's own, refused and left out
            refused = await failure(eng, BODY.model_copy(update={"logprobs": True}))
        assert refused.code is ErrorCode.INVALID_REQUEST
        assert [b.get("logprobs") for b in server.bodies] == [True, None, True]

    asyncio.run(scenario())
