"""A request refused (over a limit) or rejected (invalid) is said at DEBUG alone, its code
once: the metrics count them and llmq.dlq keeps the rejected ones, and a line per request at
INFO let a tenant past its rate limit write one for each."""

from __future__ import annotations

import asyncio
import logging

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.names import REQUESTS
from streams.outbox import Outbox
from streams.refusals import Refusals
from streams.salvage import Rejection
from tests.unit.stages import FakeSend, FakeStore

pytestmark = pytest.mark.timeout(30)


def _refusals() -> Refusals:
    return Refusals(Outbox(FakeStore(), FakeSend()))


def _said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "streams.refusals"]


def test_a_refused_request_is_said_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "streams.refusals")
    error = LlmqError(ErrorCode.RATE_LIMITED, "over 10 requests a minute")
    asyncio.run(_refusals().refuse(Rejection(error, "r1", "acme", "app.replies")))
    assert _said(caplog) == [(logging.DEBUG, "refused r1: rate_limited: over 10 requests a minute")]


def test_a_rejected_request_is_said_at_debug_its_code_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "streams.refusals")
    error = LlmqError(ErrorCode.INVALID_REQUEST, "body.messages: field required")
    why = Rejection(error, "r1", "acme", "app.replies")
    asyncio.run(_refusals().reject(REQUESTS, b"k", b"{}", why))
    assert _said(caplog) == [
        (logging.DEBUG, "rejected r1: invalid_request: body.messages: field required")
    ]
