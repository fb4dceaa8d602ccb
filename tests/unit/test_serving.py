"""Which pools work is sent to (by the front door, and on by the stream processor): those with
workers, and those scaled to zero."""

from __future__ import annotations

import pytest

from llmq.groups import DEAD, EMPTY, Group
from llmq.serving import servable


@pytest.mark.parametrize(
    ("group", "expected"),
    [
        (Group(2, "Stable"), True),
        (Group(1, "PreparingRebalance"), True),
        (Group(0, EMPTY), True),  # scaled to zero: the first record brings a worker back
        (Group(0, DEAD), False),  # no worker ever served it
    ],
)
def test_a_pool_is_servable_with_workers_or_scaled_to_zero(group: Group, expected: bool) -> None:
    assert servable(group) is expected
