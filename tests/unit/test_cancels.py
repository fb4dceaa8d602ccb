"""Cancellations: a running generation is aborted, later work skipped, old ones forgotten."""

from __future__ import annotations

from schemas.stream import Cancel
from workers.cancels import Cancellations


def _cancel(cid: str, at: float = 1000.0, tenant: str = "t") -> Cancel:
    return Cancel(correlation_id=cid, tenant=tenant, at=at)


def test_a_running_generation_is_aborted() -> None:
    aborted: list[str] = []
    cancellations = Cancellations()
    cancellations.running("t", "a", lambda: aborted.append("a"))
    assert cancellations.add(_cancel("a"), now=1000.0)
    assert aborted == ["a"]
    cancellations.stopped("t", "a")
    assert not cancellations.add(_cancel("a"), now=1000.0)  # nothing runs any more
    assert aborted == ["a"]


def test_work_that_comes_later_is_known_as_cancelled_per_tenant() -> None:
    cancellations = Cancellations()
    cancellations.add(_cancel("a"), now=1000.0)
    assert cancellations.cancelled("t", "a")
    assert not cancellations.cancelled("other", "a")
    assert not cancellations.cancelled("t", "b")


def test_old_cancellations_and_the_oldest_past_the_limit_are_forgotten() -> None:
    cancellations = Cancellations(memory_s=60, limit=2)
    cancellations.add(_cancel("old", at=900.0), now=1000.0)
    assert not cancellations.cancelled("t", "old")  # older than memory_s
    for cid in ("a", "b", "c"):
        cancellations.add(_cancel(cid), now=1000.0)
    assert [cancellations.cancelled("t", c) is not None for c in ("a", "b", "c")] == [
        False,
        True,
        True,
    ]


def test_a_request_a_cache_answered_stays_answered_whatever_cancels_it_later() -> None:
    cancellations = Cancellations()
    answered = Cancel(correlation_id="a", tenant="t", at=1000.0, answered=True)
    cancellations.add(answered, now=1000.0)
    cancellations.add(_cancel("a", at=1001.0), now=1001.0)  # its client left afterwards
    cancel = cancellations.cancelled("t", "a")
    assert cancel is not None and cancel.answered and cancel.at == 1001.0
    cancellations.add(_cancel("b"), now=1000.0)
    cancellations.add(Cancel(correlation_id="b", tenant="t", at=1000.0, answered=True), now=1000.0)
    later = cancellations.cancelled("t", "b")
    assert later is not None and later.answered
