"""Time that moves only when a test says so, for code that takes a `clock` callable; and an
event loop whose time moves only when every task waits on it, for code that reads the loop's."""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class Clock:
    """Seconds, monotonic: `now` starts at 1000 and a test adds to it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Selector(selectors.DefaultSelector):
    """Polls; where nothing is ready and the loop would wait for its next timer, moves the
    loop's time to it instead, by one float step at least (a wait shorter than that would
    not move it, and a loop waiting for time to pass would spin). With no timer it waits for
    real (a thread's reply)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            return super().select(None)
        ready = super().select(0)
        if not ready:
            self.now = max(self.now + timeout, math.nextafter(self.now, math.inf))
        return ready


class _VirtualLoop(asyncio.SelectorEventLoop):
    """A loop whose time() starts at 0 and jumps over every wait: a test of timers runs in no
    wall-clock time, and what it measures is exactly what the code scheduled, on any machine."""

    def __init__(self) -> None:
        self._clock = _Selector()
        super().__init__(self._clock)

    def time(self) -> float:
        return self._clock.now


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on a loop of virtual time (_VirtualLoop): code under test must read the
    loop's time (loop.time(), asyncio.sleep, timeouts), not time.monotonic."""
    with asyncio.Runner(loop_factory=_VirtualLoop) as runner:
        return runner.run(coro)
