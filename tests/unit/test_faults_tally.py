"""Counting a fault scenario's requests against its reply records."""

from __future__ import annotations

from tools.faults.tally import LOST_IDS_KEPT, Reply, Request, count


def _ok(at: float, cid: str, text: str = "4", cache: str = "none") -> Reply:
    return Reply(at, cid, "ok", text=text, cache=cache)


def test_every_accepted_request_answered_once_is_a_clean_tally() -> None:
    requests = [Request(f"r{i}", sent_at=i, accepted=True) for i in range(3)]
    replies = [_ok(10 + i, f"r{i}") for i in range(3)]
    tally = count(requests, replies)
    assert (tally.sent, tally.accepted, tally.replies, tally.lost) == (3, 3, 3, 0)
    assert (tally.duplicates, tally.conflicting, tally.strays) == (0, 0, 0)
    assert tally.errors == {} and tally.recovery_s is None


def test_a_send_never_acknowledged_is_not_accepted_and_not_lost() -> None:
    requests = [Request("a", 0, True), Request("b", 1, False)]
    tally = count(requests, [_ok(5, "a")])
    assert (tally.sent, tally.accepted, tally.not_accepted, tally.lost) == (2, 1, 1, 0)


def test_an_accepted_request_without_a_reply_is_lost_and_named() -> None:
    requests = [Request(f"r{i}", i, True) for i in range(LOST_IDS_KEPT + 5)]
    tally = count(requests, [_ok(1, "r0")])
    assert tally.lost == LOST_IDS_KEPT + 4
    assert tally.lost_ids == tuple(f"r{i}" for i in range(1, LOST_IDS_KEPT + 1))


def test_duplicates_conflict_only_when_the_answer_differs() -> None:
    requests = [Request("a", 0, True), Request("b", 0, True)]
    replies = [
        _ok(1, "a", "4"),
        _ok(2, "a", "4", cache="coalesced"),  # the same answer again: harmless
        _ok(3, "b", "4"),
        _ok(4, "b", "5"),  # another answer
        Reply(5, "b", "error", error_code="engine_error"),  # an error after an answer
    ]
    tally = count(requests, replies)
    assert (tally.replies, tally.duplicates, tally.conflicting) == (2, 3, 2)


def test_errors_count_first_replies_by_code() -> None:
    requests = [Request(c, 0, True) for c in "abc"]
    replies = [
        Reply(1, "a", "error", error_code="unknown_model"),
        Reply(2, "b", "error", error_code="invalid_request"),
        Reply(3, "b", "error", error_code="invalid_request"),
        _ok(4, "c"),
    ]
    assert count(requests, replies).errors == {"invalid_request": 1, "unknown_model": 1}


def test_replies_to_nothing_accepted_are_strays() -> None:
    requests = [Request("a", 0, True), Request("b", 0, False)]
    replies = [_ok(1, "a"), _ok(2, "b"), Reply(3, None, "unreadable"), _ok(4, "someone-else")]
    tally = count(requests, replies)
    assert (tally.replies, tally.strays, tally.duplicates) == (1, 3, 0)


def test_recovery_is_the_first_ok_reply_to_a_request_sent_after_the_fault() -> None:
    requests = [
        Request("before", 5, True),  # answered after the fault, but sent before it
        Request("failed", 11, True),  # sent after, answered with an error first
        Request("after", 12, True),
        Request("later", 13, True),
    ]
    replies = [
        _ok(20, "before"),
        Reply(21, "failed", "error", error_code="internal_error"),
        _ok(30, "later"),
        _ok(34, "after"),
    ]
    assert count(requests, replies, fault_at=10).recovery_s == 20


def test_no_recovery_without_an_ok_reply_after_the_fault() -> None:
    assert count([Request("a", 0, True)], [_ok(5, "a")], fault_at=1).recovery_s is None


def test_generations_count_metering_of_accepted_requests_and_those_made_twice() -> None:
    requests = [Request(c, 0, True) for c in "abc"] + [Request("d", 0, False)]
    replies = [_ok(1, c) for c in "abc"]
    # "b" coalesced with "a" (no generation of its own); "c" was redelivered and made twice.
    tally = count(requests, replies, generated=["a", "c", "c", "d", "someone-else"])
    assert (tally.replies, tally.generations, tally.regenerated) == (3, 3, 1)
