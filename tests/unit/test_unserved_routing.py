"""Work handed on to another model (escalation, fallback) goes only to a model some worker
serves: an unsure answer stands, a failure falls back past the model, or is the answer."""

from __future__ import annotations

import asyncio
import json
import logging
from functools import partial

import pytest

from llmq.serving import Serving
from schemas.catalog import Catalog
from schemas.settings import ServiceSettings
from schemas.work import Completion, WorkItem
from streams.stages import build_stages
from tests.unit import stages
from tests.unit.stages import (
    TIERED,
    Pipeline,
    completion,
    last_attempt,
    raw_request,
    result_of,
    tiered_work,
)

SPARED = Catalog.model_validate(
    {
        "default": "small",
        "models": [
            {"name": "small", "source": "/m/small", "fallback": ["backup", "spare"]},
            {"name": "backup", "source": "/m/backup"},
            {"name": "spare", "source": "/m/spare"},
        ],
    }
)
"""small falls back to backup, then to spare."""


class FakeServing:
    """llmq.serving.Serving's answers for a fixed set of models without workers; records
    what it is asked."""

    def __init__(self, unserved: set[str]) -> None:
        self.unserved = unserved
        self.asked: list[list[str]] = []

    async def serves(self, models: list[str]) -> bool:
        self.asked.append(models)
        return not set(models) <= self.unserved


def _pipeline(
    monkeypatch: pytest.MonkeyPatch, catalog: Catalog, unserved: set[str]
) -> tuple[Pipeline, FakeServing]:
    """The stages as the faust app wires them, their complete stage asking a FakeServing."""
    served = FakeServing(unserved)
    monkeypatch.setattr(stages, "build_stages", partial(build_stages, served=served))
    return Pipeline(catalog=catalog), served


def _unsure(work: WorkItem) -> bytes:
    done = Completion.model_validate_json(completion(work, "Maybe?"))
    return done.model_copy(update={"mean_logprob": -2.5}).model_dump_json().encode()


def test_an_unsure_answer_whose_next_tier_has_no_worker_stands_for_it_and_its_copies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness, served = _pipeline(monkeypatch, TIERED, {"big"})
    work = tiered_work(harness, "auto")
    assert work.route.cascade and work.route.chain[:2] == ["small", "big"]
    copy = json.loads(raw_request(cid="t-2", temperature=0))
    harness.on_request(None, json.dumps({**copy, "model": "auto"}).encode())
    assert harness.send.sent == [], "the copy follows the generation in flight"
    harness.on_completion(_unsure(work))
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert set(results) == {"t-1", "t-2"}, "nothing went to llmq.work.big"
    for result in results.values():
        assert (result.status, result.text, result.model_used) == ("ok", "Maybe?", "small")
        assert result.route is not None and not result.route.escalated
    assert served.asked == [["big"]]
    # Not cached: a later copy is generated again, and escalates once big has a worker.
    harness.send.sent.clear()
    harness.on_request(
        None, json.dumps({**copy, "correlation_id": "t-3", "model": "auto"}).encode()
    )
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.small.interactive"


def test_an_unsure_answer_escalates_where_the_next_tier_has_a_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness, served = _pipeline(monkeypatch, TIERED, set())
    work = tiered_work(harness, "auto")
    harness.on_completion(_unsure(work))
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.big.interactive"
    assert WorkItem.model_validate_json(sent.value).route.escalated
    assert served.asked == [["big"]]


def test_a_failure_falls_back_past_a_model_no_worker_serves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness, served = _pipeline(monkeypatch, SPARED, {"backup"})
    work = tiered_work(harness, "small")
    assert work.route.chain == ["small", "backup", "spare"]
    harness.on_completion(completion(work, None))  # engine_error
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.spare.interactive"
    route = WorkItem.model_validate_json(sent.value).route
    assert (route.chain, route.tried, route.fell_back) == (["small", "spare"], ["small"], True)
    assert served.asked == [["backup"], ["spare"]]


def test_a_failure_with_no_fallback_a_worker_serves_is_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness, served = _pipeline(monkeypatch, SPARED, {"backup", "spare"})
    work = tiered_work(harness, "small")
    harness.on_completion(completion(last_attempt(work), None))  # its last try fails
    dead, reply = harness.send.sent
    assert dead.topic == "llmq.dlq"
    result = result_of(reply)
    assert (result.status, result.model_used) == ("error", "small")
    assert result.error is not None and result.error.message == "failed after 3 attempts: boom"
    assert served.asked == [["backup"], ["spare"]]


def test_a_retry_on_the_same_model_asks_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model just answered: a retry goes to it whatever the workers' groups say."""
    harness, served = _pipeline(monkeypatch, TIERED, {"small", "big", "backup"})
    work = tiered_work(harness, "big")
    harness.on_completion(completion(work, None))
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.big.interactive"
    assert WorkItem.model_validate_json(sent.value).attempt == 2
    assert served.asked == []


def test_the_log_says_a_model_has_no_worker_once_not_per_request(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    harness, _ = _pipeline(monkeypatch, TIERED, {"big"})
    with caplog.at_level(logging.INFO, "streams.complete"):
        for question in ("Hi", "Hello"):
            messages = [{"role": "user", "content": question}]
            data = json.loads(raw_request(cid=question, messages=messages))
            harness.on_request(None, json.dumps({**data, "model": "auto"}).encode())
            [sent] = harness.send.sent
            harness.send.sent.clear()
            harness.on_completion(_unsure(WorkItem.model_validate_json(sent.value)))
            assert result_of(harness.send.sent.pop()).text == "Maybe?"
    said = [r.getMessage() for r in caplog.records if "no worker" in r.getMessage()]
    assert said == ["no worker serves big: unsure answers that would escalate to it stand"]


def test_every_model_counts_as_served_before_the_client_starts() -> None:
    """The stream processor asks from its first record; its client connects in the
    background (streams.app.watched)."""
    serving = Serving(ServiceSettings(), "test")
    assert asyncio.run(serving.serves(["small"])) is True
