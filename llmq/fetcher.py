"""A fix to how aiokafka 0.14's consumer stops while no broker answers.

`AIOKafkaConsumer.stop` has its fetcher cancel its fetch tasks and await them. A fetch
task that found the broker away sleeps out its retry backoff outside the handler that
turns a cancel into "no longer of interest" (False), so the cancel comes out of `stop`
itself: a worker skipped the rest of its shutdown (its producer, its engine), the front
door's shutdown failed, and faust's consumer thread never marked itself done, so the
stream processor waited out a 60 s timeout and a container's 30 s grace ended in SIGKILL.
`calm` gives the backoff the same handling as the request: with every broker away the
consumer stops in a few seconds, as it does with them up. Nothing is lost either way: an
offset not committed is read again by the next consumer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

FetchRequest = Callable[..., Coroutine[Any, Any, bool]]


def calm(proc_fetch_request: FetchRequest) -> FetchRequest:
    """`_proc_fetch_request` whose cancel answers False wherever it lands: in the request
    (as aiokafka's own handler does) or in the backoff after a failed one."""

    @functools.wraps(proc_fetch_request)
    async def _proc_fetch_request(fetcher: Any, *args: Any) -> bool:
        try:
            return await proc_fetch_request(fetcher, *args)
        except asyncio.CancelledError:
            return False

    _proc_fetch_request.calm = True  # type: ignore[attr-defined]
    return _proc_fetch_request


def install() -> None:
    """Fix aiokafka's Fetcher (once; later calls change nothing). Call it before stopping
    any AIOKafkaConsumer: every llmq process does, as it makes its consumers."""
    if not getattr(Fetcher._proc_fetch_request, "calm", False):
        Fetcher._proc_fetch_request = calm(Fetcher._proc_fetch_request)
