"""tools.bench.cache_hits: the one-at-a-time loop and the burst's summary line."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tools.bench.cache_hits import burst_line, one_at_a_time, since_send


def test_one_at_a_time_sends_each_after_the_last_answer_and_reads_its_timings() -> None:
    events: list[str] = []

    def receive() -> list[bytes]:
        events.append("answer")
        return [json.dumps({"timings": {"total_ms": 2.0 + len(events)}}).encode()]

    app_ms, total_ms = one_at_a_time(
        lambda i: f"request {i}".encode(), 3, lambda v: events.append(v.decode()), receive
    )
    assert events == ["request 0", "answer", "request 1", "answer", "request 2", "answer"]
    assert total_ms == [4.0, 6.0, 8.0]
    assert len(app_ms) == 3 and all(ms >= 0 for ms in app_ms)


def test_one_at_a_time_stops_on_a_request_never_answered() -> None:
    with pytest.raises(SystemExit, match="request 0"):
        one_at_a_time(lambda i: b"x", 2, lambda v: None, lambda: [])


def test_the_burst_line_counts_answers_a_second_and_what_answered_them() -> None:
    results = [{"timings": {"total_ms": ms}, "cache": "exact"} for ms in (10.0, 20.0, 30.0, 40.0)]
    line = burst_line(results, wall=2.0)
    assert line.startswith("2 answers/s (2.00 s)")
    assert "{'exact': 4}" in line


def test_a_burst_answer_is_timed_from_the_send_not_from_its_earlier_creation() -> None:
    result: dict[str, Any] = {
        "correlation_id": "a",
        "cache": "exact",
        "timings": {"total_ms": 900.0},
    }
    moved = since_send(result, {"a": 100.0}, sent=100.5)
    assert moved["timings"]["total_ms"] == 400.0
    assert result["timings"]["total_ms"] == 900.0, "the parsed reply is left as it was"
    assert since_send(result, {}, sent=100.5)["timings"]["total_ms"] == 900.0
