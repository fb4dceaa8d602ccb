"""The order of a run: every test that does not need the session's stack first (unit tests,
then those that start stacks and engines of their own), then those that share it.

The session's stack (two vLLM engines, Kafka, the stream processor, four workers) stays up
from its first test to the end of the run. A test that starts a stack of its own beside it
shares 2 cores and 24 GiB with it idle; before it starts, it has the machine to itself.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from types import FrameType

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


class _Stop:
    """SIGTERM (a CI time limit) ends the run as Ctrl-C does, so teardown stops the stacks and
    engines the tests started: they run detached and would outlive a killed run, holding its
    ports and memory. A signal during a teardown waits for its end: interrupted, that
    teardown would leave its stack behind."""

    tearing_down = False
    asked = False

    @classmethod
    def on_signal(cls, signum: int, frame: FrameType | None) -> None:
        if cls.tearing_down:
            cls.asked = True
            return
        raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM interrupts the run (see _Stop)."""
    signal.signal(signal.SIGTERM, _Stop.on_signal)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Again before each test: a test of the `llmq` command installs the command's own
    handler (SIGTERM exits it), which would make a later signal one test's failure."""
    signal.signal(signal.SIGTERM, _Stop.on_signal)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """A test's teardown, with the module and session fixtures it ends, runs to its end."""
    signal.signal(signal.SIGTERM, _Stop.on_signal)
    _Stop.tearing_down = True
    try:
        yield
    finally:
        _Stop.tearing_down = False
    if _Stop.asked:
        raise KeyboardInterrupt("SIGTERM during a teardown")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> Iterator[None]:
    """The session's last teardowns run to their end."""
    signal.signal(signal.SIGTERM, _Stop.on_signal)
    _Stop.tearing_down = True
    yield
