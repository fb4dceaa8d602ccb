"""Time that moves only when a test says so, for code that takes a `clock` callable."""

from __future__ import annotations


class Clock:
    """Seconds, monotonic: `now` starts at 1000 and a test adds to it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
