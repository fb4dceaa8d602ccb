"""With this directory on its path, the stream processor drops the first record it fetches
from each partition of llmq.requests, as faust does on some restarts (streams/offsets.py),
so a test can check that it reads them again."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from schemas.names import REQUESTS

_fetch = Consumer.getmany
_dropped: set[TP] = set()


async def _dropping(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:  # noqa: ASYNC109 -- faust's signature
    async for tp, message in _fetch(self, timeout):
        if tp.topic == REQUESTS and tp not in _dropped:
            _dropped.add(tp)
            print(f"dropped {tp.topic}[{tp.partition}]@{message.offset}", flush=True)
            continue
        yield tp, message


Consumer.getmany = _dropping  # type: ignore[method-assign]
