"""The order of a run: every test that does not need the session's stack first (unit tests,
then those that start stacks and engines of their own), then those that share it.

The session's stack (two vLLM engines, Kafka, the stream processor, four workers) stays up
from its first test to the end of the run. A test that starts a stack of its own beside it
shares 2 cores and 24 GiB with it idle; before it starts, it has the machine to itself.
"""

from __future__ import annotations

import pytest

SHARED = "openai_server"
"""The session fixture the stack itself needs, so every test on the stack needs it too."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Unit tests, then integration tests without the session's stack, then those with it;
    each group in the order collected."""
    items.sort(
        key=lambda item: (
            SHARED in getattr(item, "fixturenames", ()),
            item.get_closest_marker("integration") is not None,
        )
    )
