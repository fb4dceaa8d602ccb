"""Creating the topic plan waits out a young cluster whose brokers are still meeting."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kafka.errors import TopicAuthorizationFailedError, UnknownBrokerIdError

from tools.topics import _patiently, ensure_topics


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


def test_a_broker_that_accepts_but_never_answers_is_given_up_within_the_timeout() -> None:
    """kafka-python's own bootstrap bound (30 s) held `llmq topics --timeout 3` for 31 s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        outcome: list[BaseException] = []

        def create() -> None:
            try:
                ensure_topics(f"127.0.0.1:{port}", [], timeout_s=0.5)
            except RuntimeError as exc:
                outcome.append(exc)

        worker = threading.Thread(target=create, daemon=True)
        worker.start()
        worker.join(timeout=15)  # a bound on the test, far from 0.5 s and far below 30 s
        assert not worker.is_alive() and "did not answer within" in str(outcome[0])
