"""Creating the topic plan waits out a young cluster whose brokers are still meeting."""

from __future__ import annotations

import time

import pytest
from kafka.errors import TopicAuthorizationFailedError, UnknownBrokerIdError

from tools.topics import _patiently


def test_a_broker_the_client_has_not_heard_of_yet_is_asked_again() -> None:
    answers: list[BaseException | str] = [
        UnknownBrokerIdError("2"),
        UnknownBrokerIdError("2"),
        "ok",
    ]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert _patiently(time.monotonic() + 10, call) == "ok"
    assert answers == []


def test_an_error_that_waiting_cannot_mend_is_raised_at_once() -> None:
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise TopicAuthorizationFailedError("not allowed")

    with pytest.raises(TopicAuthorizationFailedError):
        _patiently(time.monotonic() + 10, call)
    assert calls == 1


def test_a_cluster_that_never_meets_gives_up_at_the_deadline() -> None:
    def call() -> None:
        raise UnknownBrokerIdError("2")

    with pytest.raises(UnknownBrokerIdError):
        _patiently(time.monotonic() + 1, call)
