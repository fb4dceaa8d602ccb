"""A generation answered for thousands of coalesced copies at once: the outbox replies to
them REPLIES_AT_ONCE at a time, not all together (each reply's Redis calls would queue on
the pool every agent shares)."""

from __future__ import annotations

import asyncio

from schemas.errors import ErrorCode, LlmqError
from schemas.names import RESULTS
from schemas.result import InferenceResult
from streams.outbox import REPLIES_AT_ONCE, Outbox
from streams.replies import from_error
from tests.unit.stages import FakeLedger, FakeSend, FakeStore

COPIES = 1000


class CountingStore(FakeStore):
    """Counts the results being stored at once, and the most ever."""

    def __init__(self) -> None:
        super().__init__()
        self.storing = self.most = 0

    async def keep_result(self, result: InferenceResult) -> InferenceResult:
        self.storing += 1
        self.most = max(self.most, self.storing)
        await asyncio.sleep(0)  # a round trip: the others run meanwhile
        self.storing -= 1
        return await super().keep_result(result)


def test_a_burst_of_replies_has_at_most_replies_at_once_in_flight() -> None:
    store, send, ledger = CountingStore(), FakeSend(), FakeLedger()
    error = LlmqError(ErrorCode.INTERNAL_ERROR, "lost")
    results = [(RESULTS, from_error(error, f"copy-{i}", "acme")) for i in range(COPIES)]
    asyncio.run(Outbox(store, send, ledger).reply_all(results, holding="copy-0"))
    assert store.most == REPLIES_AT_ONCE, "no more at once, and that many overlap"
    assert len(store.results) == len(send.sent) == COPIES
    assert len(ledger.calls) == COPIES - 1, "the held request's hold stays"
    assert "release copy-0" not in ledger.calls
