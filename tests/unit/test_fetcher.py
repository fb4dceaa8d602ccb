"""llmq.fetcher: aiokafka's own fetch request, cancelled in its backoff after the broker
was away (as its consumer's `stop` does), answers False instead of raising."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.errors import NodeNotReadyError

from llmq.fetcher import FetchRequest, calm, install

pytestmark = pytest.mark.timeout(30)


async def _away(*_: Any) -> None:
    raise NodeNotReadyError("node 1 is not ready")


def _fetcher() -> SimpleNamespace:
    """What `_proc_fetch_request` touches on its way to the backoff: a client whose broker
    is away, a long backoff."""
    return SimpleNamespace(
        _client=SimpleNamespace(send=_away),
        _retry_backoff=60.0,
        _invalidate_preferred_read_replica_for_node=lambda *_: None,
    )


async def _cancelled_in_backoff(proc: FetchRequest) -> bool:
    task = asyncio.ensure_future(proc(_fetcher(), None, 1, SimpleNamespace(topics=[])))
    for _ in range(5):  # into the send, its failure, the backoff's sleep
        await asyncio.sleep(0)
    assert not task.done()
    task.cancel()
    return await task


def test_aiokafkas_own_fetch_raises_its_cancel_out_of_the_backoff() -> None:
    proc = getattr(Fetcher._proc_fetch_request, "__wrapped__", Fetcher._proc_fetch_request)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(_cancelled_in_backoff(proc))


def test_the_calm_fetch_answers_false_and_passes_results_through() -> None:
    proc = getattr(Fetcher._proc_fetch_request, "__wrapped__", Fetcher._proc_fetch_request)
    assert asyncio.run(_cancelled_in_backoff(calm(proc))) is False

    async def fetched(*_: Any) -> bool:
        return True

    assert asyncio.run(calm(fetched)(_fetcher())) is True


def test_install_wraps_the_fetch_once() -> None:
    install()
    once = Fetcher._proc_fetch_request
    install()
    assert Fetcher._proc_fetch_request is once
    assert getattr(once, "calm", False)
    assert not getattr(once.__wrapped__, "calm", False)
