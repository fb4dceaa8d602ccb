"""tools.bench.hops: a request's steps from the create times of its records."""

from __future__ import annotations

import pytest

from tools.bench.hops import STEPS, steps, unanswered


def test_each_step_is_the_time_between_two_records_and_the_worker_leaves_out_the_engine() -> None:
    topics = ["a", "b", "c", "d", "e"]
    sent = {"a": 100.000, "b": 100.010, "c": 100.030, "d": 101.045, "e": 101.050}
    got = steps(sent, topics, engine_ms=1000.0, received=101.058)
    assert list(got) == list(STEPS)
    assert got == pytest.approx(
        {"admission": 10.0, "dedupe": 20.0, "worker": 15.0, "complete": 5.0, "to the app": 8.0}
    )


def test_a_question_left_unanswered_names_the_load_or_the_stack() -> None:
    loaded = unanswered(4, 2.0)
    assert loaded.startswith("question 5 got no answer within 120 s")
    assert "2 requests a second" in loaded and "lower --load" in loaded
    assert "llmq local status" in unanswered(0, 0.0)
