"""A leader whose handling is cancelled (a SIGTERM, a revoked partition) keeps the copies
waiting on it: its record comes again, even to the same process, and leads anew for them."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.work import WorkItem
from streams.coalesce import Coalescer
from streams.outbox import Outbox
from streams.settings import StreamSettings
from streams.stages import Stages, build_stages
from tests.unit.stages import FailingSend, FakeStore, admitted, completion, raw_request

pytestmark = pytest.mark.timeout(60)


class Stalling(FailingSend):
    """A send that, while `stall` is set, never finishes a send to topics starting with
    `held` (a broker that stopped acknowledging); `stalled` is set once one waits."""

    def __init__(self, held: str, failing: str = "", failures: int = 0) -> None:
        super().__init__(failing, failures)
        self.held = held
        self.stall = True
        self.stalled = asyncio.Event()

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        if self.stall and topic.startswith(self.held):
            self.stalled.set()
            await asyncio.Future()
        await super().__call__(topic, key, value, headers, partition)


def _process(table: dict[bytes, bytes], store: FakeStore, send: FailingSend, epoch: str) -> Stages:
    """The stages of one stream-processor process on the shared coalescing table."""
    coalescer = Coalescer(table, stale_after_s=600, epoch=epoch)
    retry = StreamSettings().retry_policy()
    return build_stages(Catalog.builtin(), Outbox(store, send), coalescer, retry)


async def _keyed(stages: Stages, work: WorkItem) -> None:
    await stages.dedupe.on_keyed(work.fingerprint.encode(), work.model_dump_json().encode())


async def _cancelled_mid_send(stages: Stages, send: Stalling, work: WorkItem) -> None:
    """Handle `work` until a send stalls, then cancel its handling, as faust does."""
    task = asyncio.create_task(_keyed(stages, work))
    await send.stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    send.stall = False


async def _answered_after_redelivery(
    table: dict[bytes, bytes], store: FakeStore, send: Stalling, stages: Stages, lead: WorkItem
) -> list[str]:
    """The leader's record again, on the same process; its generation answers."""
    await _keyed(stages, lead)
    [sent] = [s for s in send.sent if s.topic.startswith("llmq.work")]
    await stages.complete.on_completion(None, completion(WorkItem.model_validate_json(sent.value)))
    assert table == {}
    return sorted(store.results)


def _restarted_with_followers(
    table: dict[bytes, bytes], store: FakeStore, *followers: str
) -> WorkItem:
    """A leader and its followers handled by a process that is gone since."""
    old = _process(table, store, FailingSend("", 0), "old")
    works = [admitted(raw_request(cid, temperature=0)) for cid in ("lead", *followers)]
    for work in works:
        asyncio.run(_keyed(old, work))
    return works[0]


def test_a_re_lead_cancelled_mid_send_keeps_its_followers_and_leads_again() -> None:
    table: dict[bytes, bytes] = {}
    store = FakeStore()
    lead = _restarted_with_followers(table, store, "f1", "f2")

    async def main() -> list[str]:
        send = Stalling("llmq.work")
        new = _process(table, store, send, "new")
        # Its record, redelivered after the restart, leads anew; cancelled while it sends.
        await _cancelled_mid_send(new, send, lead)
        assert Coalescer(table, 600, epoch="new").followers(lead.fingerprint) == 2
        # A rebalance gives the partition back to this very process: the record leads again.
        return await _answered_after_redelivery(table, store, send, new, lead)

    assert asyncio.run(main()) == ["f1", "f2", "lead"]


def test_a_leader_cancelled_while_telling_its_copies_it_failed_leads_again() -> None:
    table: dict[bytes, bytes] = {}
    store = FakeStore()
    lead = _restarted_with_followers(table, store, "f1")

    async def main() -> list[str]:
        # Its work is refused, and the failure's reply to its copy never acknowledged.
        send = Stalling("app.replies", "llmq.work", 1)
        new = _process(table, store, send, "new")
        await _cancelled_mid_send(new, send, lead)
        return await _answered_after_redelivery(table, store, send, new, lead)

    assert asyncio.run(main()) == ["f1", "lead"]


def test_an_abandoned_leader_leads_again_in_its_own_process_keeping_followers() -> None:
    table: dict[bytes, bytes] = {}
    coalescer = Coalescer(table, stale_after_s=10, epoch="this")
    request = InferenceRequest.model_validate(
        {"correlation_id": "a", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    assert not coalescer.join(request, "fp", now=100)
    assert coalescer.join(request.model_copy(update={"correlation_id": "b"}), "fp", now=101)
    coalescer.abandon("fp", "b")
    leader = coalescer.leader("fp")
    assert leader is not None and leader.epoch == "this", "only its leader abandons it"
    coalescer.abandon("fp", "a")
    assert coalescer.join(request.model_copy(update={"correlation_id": "c"}), "fp", now=102)
    assert not coalescer.join(request, "fp", now=103), "abandoned: its record leads again"
    leader = coalescer.leader("fp")
    assert leader is not None and (leader.epoch, leader.since) == ("this", 103)
    assert coalescer.followers("fp") == 2, "and every copy still waits"
