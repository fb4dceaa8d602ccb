"""Futures whose outcome nobody awaits: read it, so asyncio does not log it as never read."""

from __future__ import annotations

import asyncio
from typing import Any


def read_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback for a future left to itself (cancelled, or whose sender learns its
    failure another way): take its exception, if any, as read."""
    if not future.cancelled():
        future.exception()
