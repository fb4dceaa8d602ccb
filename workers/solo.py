"""Suspects run alone: a record that was in flight whenever a worker died may be the one
that killed it, or a bystander. Run alone, a bystander finishes and a killer takes down
only itself, so its start count, not a bystander's, reaches the bound (workers/starts.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Solo:
    """Many generations at once, or one suspect alone. A suspect that waits goes first:
    no new generation starts until it has run."""

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._running = 0
        self._alone = False
        self._waiting = 0

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        """Run beside the others, unless a suspect runs or waits."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._alone and not self._waiting)
            self._running += 1
        try:
            yield
        finally:
            async with self._changed:
                self._running -= 1
                self._changed.notify_all()

    @asynccontextmanager
    async def alone(self) -> AsyncIterator[None]:
        """Run with nothing else in the engine."""
        async with self._changed:
            self._waiting += 1
            try:
                await self._changed.wait_for(lambda: not self._alone and not self._running)
            finally:  # cancelled, it no longer holds back those waiting in shared()
                self._waiting -= 1
                self._changed.notify_all()
            self._alone = True
        try:
            yield
        finally:
            async with self._changed:
                self._alone = False
                self._changed.notify_all()

    @property
    def suspects(self) -> int:
        """Suspects running or waiting to."""
        return self._waiting + int(self._alone)
