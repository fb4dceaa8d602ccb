"""Priority lanes: interactive before standard before batch."""

from __future__ import annotations

from schemas.lanes import Lane


def test_lane_priorities_order_interactive_standard_batch() -> None:
    assert Lane.INTERACTIVE.priority < Lane.STANDARD.priority < Lane.BATCH.priority


def test_interactive_has_vllms_highest_priority() -> None:
    # vLLM serves a lower priority value first.
    assert Lane.INTERACTIVE.priority == 0
    assert min(Lane, key=lambda lane: lane.priority) is Lane.INTERACTIVE


def test_lanes_parse_from_their_wire_names() -> None:
    assert [Lane(v) for v in ("interactive", "standard", "batch")] == list(Lane)
