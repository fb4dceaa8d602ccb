"""Batch replies the collector cannot read (gateway/batch/collector.py, _unreadable): a newer
llmq's reply, during an upgrade, ends its line with an error instead of leaving it to wait
until its batch expires; a record that names no line is skipped, with a warning."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from gateway.batch.collector import Collector
from gateway.batch.store import BatchStore, Outcome
from schemas.result import ChatCompletion, Choice, InferenceResult, Usage
from schemas.settings import ServiceSettings

pytestmark = pytest.mark.timeout(30)

BATCH, TENANT = "batch_0a", "acme"


class MemoryStore(BatchStore):
    """One chat-completions batch of three lines, in memory: what the collector reads of it,
    and the outcomes it records."""

    def __init__(self) -> None:
        self.recorded: list[Outcome] = []

    async def batch(self, batch_id: str, tenant: str | None = None) -> dict[str, str] | None:
        if (batch_id, tenant) != (BATCH, TENANT):
            return None
        return {"expires_at": "4102444800", "endpoint": "/v1/chat/completions"}

    async def custom_ids(self, batch_id: str, numbers: list[int]) -> list[str | None]:
        return [f"c{n}" if n < 3 else None for n in numbers]

    async def record(self, batch_id: str, tenant: str, outcomes: list[Outcome]) -> list[int]:
        self.recorded += outcomes
        return [1] * len(outcomes)


def _reply(number: int) -> dict[str, object]:
    """A reply of line `number`'s first attempt, as JSON."""
    message = {"role": "assistant", "content": "A."}
    choice = Choice(message=message, finish_reason="stop")
    usage = Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4)
    answer = ChatCompletion(id="x", created=1, model="m", choices=[choice], usage=usage)
    result = InferenceResult(
        correlation_id=f"{BATCH}.{number}.1", tenant=TENANT, status="ok", response=answer
    )
    return dict(json.loads(result.model_dump_json()))


def _take(values: list[bytes | None]) -> list[Outcome]:
    store = MemoryStore()
    asyncio.run(Collector(ServiceSettings(), store, "door-1").take(values))
    return store.recorded


def test_a_reply_from_a_newer_llmq_ends_its_line_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record version this llmq does not read: skipped, the line would wait for the
    batch's expiry; the lines beside it are written as ever, one whose message has a field
    this llmq does not know among them."""
    newer, known = _reply(1), _reply(2)
    newer["schema_version"] = 2
    known["response"]["choices"][0]["message"]["annotations"] = []  # type: ignore[index]
    values: list[bytes | None] = [json.dumps(r).encode() for r in (_reply(0), newer, known)]
    with caplog.at_level(logging.WARNING):
        made = _take(values)
    kinds = [(o.line, o.attempt, o.kind) for o in made]
    assert kinds == [(0, 1, "output"), (1, 1, "error"), (2, 1, "output")]
    line = made[1].body
    assert line["custom_id"] == "c1" and line["id"] == f"batch_req_{BATCH}.1.1"
    error = line["response"]["body"]["error"]
    assert error["code"] == "internal_error"
    assert error["message"].startswith("the line's reply could not be read (from a newer llmq?)")
    assert "schema_version" in error["message"]
    assert f"the reply {BATCH}.1.1 could not be read" in caplog.text


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"not json",
        b"[" * 100_000,
        b'["a list"]',
        json.dumps({"correlation_id": f"{BATCH}.1.1", "status": "maybe"}).encode(),
        json.dumps({"correlation_id": "app-7", "tenant": TENANT, "status": "maybe"}).encode(),
    ],
    ids=["empty", "not json", "too deep", "a list", "no tenant", "no line id"],
)
def test_a_record_that_names_no_line_is_skipped_with_a_warning(
    caplog: pytest.LogCaptureFixture, value: bytes | None
) -> None:
    with caplog.at_level(logging.WARNING):
        assert _take([value]) == []
    assert "skipped a re" in caplog.text


class NewerStore(MemoryStore):
    """The batch, made by a newer front door for an endpoint this llmq does not know."""

    async def batch(self, batch_id: str, tenant: str | None = None) -> dict[str, str] | None:
        found = await super().batch(batch_id, tenant)
        return None if found is None else {**found, "endpoint": "/v1/embeddings"}


def test_replies_of_a_batch_of_an_endpoint_it_does_not_know_send_their_lines_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """None is written (in another endpoint's shape, or as an error, unreadable): each line
    goes again, for a door that knows the endpoint to answer; logged once a batch."""
    newer = _reply(1)
    newer["response"]["choices"][0]["message"]["annotations"] = []  # type: ignore[index]
    values: list[bytes | None] = [json.dumps(r).encode() for r in (_reply(0), newer)]
    store = NewerStore()
    collector = Collector(ServiceSettings(), store, "door-1")
    with caplog.at_level(logging.WARNING):
        asyncio.run(collector.take(values))
        asyncio.run(collector.take(values[:1]))
    made = [(o.line, o.attempt, o.kind, o.body) for o in store.recorded]
    assert made == [(0, 1, "retry", {}), (1, 1, "retry", {}), (0, 1, "retry", {})]
    assert caplog.text.count(f"batch {BATCH} calls /v1/embeddings") == 1
