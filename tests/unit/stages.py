"""Fakes and builders for the stream-processor stage tests: an in-memory store, table and send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.metering import MeteringEvent
from schemas.names import (
    REQUESTS_KEYED,
)
from schemas.request import ChatMessage
from schemas.result import (
    ChatCompletion,
    Choice,
    ErrorInfo,
    InferenceResult,
    Timings,
    Usage,
)
from schemas.work import Completion, WorkItem
from streams.admission import Ahead, Compress, Gate
from streams.admit import admit
from streams.coalesce import Coalescer
from streams.dedupe import Similar
from streams.outbox import Ledger, Outbox
from streams.settings import StreamSettings
from streams.stages import build_stages

MODEL = "smollm2-135m"


class FakeStore:
    """The Store protocol on dicts; the first result per correlation_id wins."""

    def __init__(self) -> None:
        self.answers: dict[str, ChatCompletion] = {}
        self.results: dict[str, InferenceResult] = {}
        self.claims: dict[str, str] = {}
        self.handed: dict[str, float] = {}

    async def cached(self, fingerprint: str) -> ChatCompletion | None:
        return self.answers.get(fingerprint)

    async def cache(self, fingerprint: str, response: ChatCompletion) -> None:
        self.answers[fingerprint] = response

    async def claim(self, tenant: str, correlation_id: str) -> bool:
        return self.claims.setdefault(f"{tenant}/{correlation_id}", "cache") == "cache"

    async def keep_result(self, result: InferenceResult) -> InferenceResult:
        if result.correlation_id is None:
            return result
        return self.results.setdefault(result.correlation_id, result)

    async def handed_on(self, tenant: str, correlation_id: str, step: str) -> bool:
        return f"{tenant}/{correlation_id}/{step}" in self.handed

    async def mark_handed_on(
        self, tenant: str, correlation_id: str, step: str, until: float
    ) -> None:
        self.handed[f"{tenant}/{correlation_id}/{step}"] = until


class FakeLedger:
    """Records what the stages settle and release, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def settle(self, event: MeteringEvent | None) -> None:
        if event is not None:
            self.calls.append(f"settle {event.correlation_id} {event.cost_usd}")

    async def release(self, result: InferenceResult) -> None:
        self.calls.append(f"release {result.correlation_id}")


class Sent(NamedTuple):
    topic: str
    key: bytes | None
    value: bytes
    headers: Mapping[str, bytes] | None
    partition: int | None = None


class FakeSend:
    """Records every publish, in order; subclasses refuse or watch one first (`before`)."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    async def __call__(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Mapping[str, bytes] | None = None,
        partition: int | None = None,
    ) -> None:
        self.before(topic, key, value, headers)
        self.sent.append(Sent(topic, key, value, headers, partition))

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        """Called with each publish before it is recorded; raising refuses it."""


class FailingSend(FakeSend):
    """Fails the next `failures` sends to topics starting with `prefix` (every topic: "")
    with `error`, as a broker that goes away would."""

    def __init__(self, prefix: str, failures: int, error: Exception | None = None) -> None:
        super().__init__()
        self.prefix = prefix
        self.failures = failures
        self.error = error or ConnectionError("broker gone")

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        if self.failures and topic.startswith(self.prefix):
            self.failures -= 1
            raise self.error


class Pipeline:
    """The three stages on one store, table and send, as the faust app wires them; records
    that admission re-keys are handed on to dedupe, as Kafka would."""

    def __init__(
        self,
        store: FakeStore | None = None,
        *,
        catalog: Catalog | None = None,
        gate: Gate | None = None,
        compress: Compress | None = None,
        send: FakeSend | None = None,
        similar: Similar | None = None,
        ledger: Ledger | None = None,
        table: dict[bytes, bytes] | None = None,
        ahead: Ahead | None = None,
    ) -> None:
        self.store = store or FakeStore()
        self.send = send or FakeSend()
        self.table: dict[bytes, bytes] = {} if table is None else table
        stages = build_stages(
            catalog or Catalog.builtin(),
            Outbox(self.store, self.send, ledger),
            Coalescer(self.table, stale_after_s=600),
            StreamSettings().retry_policy(),
            similar=similar,
            gate=gate,
            compress=compress,
            ahead=ahead,
        )
        self.admission = stages.admission
        self.dedupe = stages.dedupe
        self.complete = stages.complete

    def on_request(self, key: bytes | None, raw: bytes) -> None:
        asyncio.run(self._on_request(key, raw))

    async def _on_request(self, key: bytes | None, raw: bytes) -> None:
        await self.admission.on_request(key, raw)
        while keyed := [s for s in self.send.sent if s.topic == REQUESTS_KEYED]:
            self.send.sent.remove(keyed[0])
            await self.dedupe.on_keyed(keyed[0].key, keyed[0].value)

    def on_completion(self, value: bytes) -> None:
        asyncio.run(self._on_completion(value))

    async def _on_completion(self, value: bytes) -> None:
        await self.complete.on_completion(None, value)
        await asyncio.sleep(0.01)  # background work (semantic cache adds) gets its turn


def raw_request(cid: str = "req-1", cache: str = "auto", **body: Any) -> bytes:
    data = {
        "correlation_id": cid,
        "tenant": "acme",
        "lane": "interactive",
        "reply_to": "app.replies",
        "cache": cache,
        "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, **body},
    }
    return json.dumps(data).encode()


def admitted(raw: bytes) -> WorkItem:
    work = admit(raw, Catalog.builtin())
    assert isinstance(work, WorkItem)
    return work


def answer(text: str) -> ChatCompletion:
    return ChatCompletion(
        id="chatcmpl-first",
        created=1,
        model=MODEL,
        choices=[Choice(message=ChatMessage(role="assistant", content=text), finish_reason="stop")],
        usage=Usage(prompt_tokens=3, completion_tokens=1, total_tokens=4),
    )


def answered(correlation_id: str, tenant: str, text: str) -> InferenceResult:
    """A request's result: the answer `text`."""
    return InferenceResult(
        correlation_id=correlation_id, tenant=tenant, status="ok", response=answer(text)
    )


def completion(
    work: WorkItem, text: str | None = "Hello!", code: ErrorCode = ErrorCode.ENGINE_ERROR
) -> bytes:
    """The worker's outcome: an answer, or (text None) a failure with `code`."""
    error = ErrorInfo.from_error(LlmqError(code, "boom"))
    completion = Completion(
        work=work,
        response=None if text is None else answer(text),
        error=error if text is None else None,
        timings=Timings(queue_ms=1.0, ttft_ms=2.0, engine_ms=3.0),
        worker="w1",
    )
    return completion.model_dump_json().encode()


def last_attempt(work: WorkItem, attempts: int = 3) -> WorkItem:
    """The work item as its last attempt (the Complete stage retries up to 3 by default)."""
    return work.model_copy(update={"attempt": attempts})


def result_of(sent: Sent) -> InferenceResult:
    return InferenceResult.model_validate_json(sent.value)


def metered(work: WorkItem, cost: float, text: str = "Hello!") -> Completion:
    """The worker's answer with its metering event attached, as the worker sends it."""
    done = Completion.model_validate_json(completion(work, text))
    event = MeteringEvent(
        correlation_id=work.request.correlation_id,
        tenant=work.request.tenant,
        model=work.model,
        lane=work.request.lane,
        fingerprint=work.fingerprint,
        prompt_tokens=3,
        completion_tokens=1,
        cost_usd=cost,
        queue_ms=1.0,
        ttft_ms=1.0,
        engine_ms=1.0,
        worker="w1",
    )
    return done.model_copy(update={"metering": event})


TIERED = Catalog.model_validate(
    {
        "default": "small",
        "routing": {"cascade": True, "escalate_below": -1.0},
        "models": [
            {"name": "small", "source": "/m/small", "tier": 1, "fallback": ["backup"]},
            {"name": "big", "source": "/m/big", "tier": 2},
            {"name": "backup", "source": "/m/backup", "tier": 1},
        ],
    }
)
"""small escalates to big when unsure (cascade) and falls back to backup when it fails."""


def tiered_work(harness: Pipeline, model: str, cid: str = "t-1") -> WorkItem:
    """A deterministic request for `model` of TIERED, admitted: its work item."""
    data = json.loads(raw_request(cid=cid, temperature=0))
    data["model"] = model
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)
