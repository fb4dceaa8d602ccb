"""A generation that failed for good is said in the stream processor's log as it goes to
llmq.dlq: a WARNING naming the request, the model and its attempts, not the message."""

from __future__ import annotations

import logging

import pytest

from schemas.errors import ErrorCode
from schemas.names import DLQ
from schemas.work import WorkItem
from tests.unit.stages import MODEL, Pipeline, admitted, completion, raw_request

pytestmark = pytest.mark.timeout(30)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "streams.complete" and r.levelno == logging.WARNING
    ]


def test_a_final_failure_is_logged_as_it_is_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Pipeline()
    harness.on_request(None, raw_request(cid="req-9", temperature=0))
    [sent] = harness.send.sent
    work = WorkItem.model_validate_json(sent.value)
    for _ in range(2):  # two retries on the same model, said nowhere
        harness.send.sent.clear()
        harness.on_completion(completion(work, None))
        [sent] = harness.send.sent
        work = WorkItem.model_validate_json(sent.value)
    assert _warnings(caplog) == []
    harness.send.sent.clear()
    harness.on_completion(completion(work, None))
    dead, _ = harness.send.sent
    assert dead.topic == DLQ
    assert _warnings(caplog) == [
        f"req-9 failed for good on {MODEL} after 3 attempt(s) (engine_error): dead-lettered"
    ]


def test_a_failure_no_retry_could_help_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    """The request's own fault (a bad request): its reply says it, no dead letter."""
    harness = Pipeline()
    work = admitted(raw_request(temperature=0))
    harness.on_completion(completion(work, None, ErrorCode.INVALID_REQUEST))
    assert [s.topic for s in harness.send.sent if s.topic == DLQ] == []
    assert _warnings(caplog) == []
