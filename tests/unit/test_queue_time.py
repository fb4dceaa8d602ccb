"""Queue time is of the work's last send (WorkItem.sent_at), not of the request's admission:
a retry, fallback, escalation or promotion is sent again, and its queue time must not hold
the earlier generations and their backoff."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from schemas.work import WorkItem
from streams.outbox import Outbox
from tests.unit.stages import FakeSend, FakeStore
from tests.unit.worker_fakes import FakeEngine, serve_one, work
from workers.inflight import InFlight

pytestmark = pytest.mark.timeout(30)

ADMITTED = 1_000.0
SENT = 1_030.0
STARTED = 1_030.5


def _item(**fields: Any) -> WorkItem:
    return WorkItem.model_validate_json(work(admitted_at=ADMITTED, **fields))


def test_queue_time_is_from_the_last_send_not_the_admission() -> None:
    state = InFlight(work=_item(sent_at=SENT, attempt=2), request_id="r", started_at=STARTED)
    assert state.timings(STARTED + 1).queue_ms == pytest.approx(500.0)


def test_a_retrys_queue_time_leaves_out_its_backoff() -> None:
    item = _item(sent_at=SENT - 10, not_before=SENT, attempt=2)
    state = InFlight(work=item, request_id="r", started_at=STARTED)
    assert state.timings(STARTED + 1).queue_ms == pytest.approx(500.0)


def test_a_record_of_a_writer_before_sent_at_reads_and_queues_from_admission() -> None:
    older = _item().model_dump_json(exclude={"sent_at"}).encode()
    assert b"sent_at" not in older
    item = WorkItem.model_validate_json(older)
    assert item.sent_at is None and item.queued_since == ADMITTED
    state = InFlight(work=item, request_id="r", started_at=STARTED)
    assert state.timings(STARTED).queue_ms == pytest.approx(30_500.0)


def test_each_send_is_stamped_and_changes_nothing_else() -> None:
    """A re-sent item (one that came back in a completion) is stamped anew; its key, and so
    its fingerprint (cache key, coalescing identity), and its request stay as they were."""
    came_back = _item(sent_at=SENT, attempt=2)
    send = FakeSend()
    before = time.time()
    asyncio.run(Outbox(FakeStore(), send).work(came_back))
    [sent] = send.sent
    record = WorkItem.model_validate_json(sent.value)
    assert record.sent_at is not None and before <= record.sent_at <= time.time()
    assert record.model_copy(update={"sent_at": SENT}) == came_back
    assert sent.key == came_back.fingerprint.encode()
    assert record.admitted_at == ADMITTED, "the request's age is kept"


def _queue(suffix: str) -> float:
    labels = {"lane": "standard"}
    return REGISTRY.get_sample_value(f"llmq_worker_queue_seconds_{suffix}", labels) or 0.0


def test_the_worker_observes_queue_time_from_the_send() -> None:
    """Admitted an hour ago, sent later than the worker's start (another host's clock): from
    its send the queue time can only be 0, from its admission it would be an hour."""
    now = time.time()
    value = work(admitted_at=now - 3600, sent_at=now + 3600)
    count, total = _queue("count"), _queue("sum")
    [completion] = serve_one(value, FakeEngine()).completions()
    assert completion.timings.queue_ms == 0.0
    assert (_queue("count"), _queue("sum")) == (count + 1, total)
