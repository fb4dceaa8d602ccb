"""A batch paced to what admission takes: a tenant's rate limit refuses most of a batch's
lines, and the runner's window (gateway/batch/runner.py, _Window) keeps the sends to a few
per line, where sending every due line at each look sent each line tens of times. The store
is in memory (as its Lua scripts write Redis), admission a token bucket as the rate limit's,
and time a simulated clock that the test moves on a runner's tick at a time."""

from __future__ import annotations

import asyncio
import json
import types
from collections.abc import AsyncIterator, Iterable, Sequence

import pytest

from gateway.batch import collector, runner
from gateway.batch.collector import outcome, parse_line_id
from gateway.batch.runner import Pace, Runner
from gateway.batch.store import BatchStore, Outcome
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import InferenceRequest
from schemas.result import ChatCompletion, Choice, ErrorInfo, InferenceResult, Usage
from tests.unit.clock import Clock

pytestmark = pytest.mark.timeout(60)

CATALOG = Catalog.builtin()
TENANT, BATCH, FILE = "acme", "batch_0a", "file-0a"
LINES, IN_FLIGHT = 200, 100
TICK_S = 0.5
ANSWER_S = 2.0
"""How long an admitted line takes to be answered; a refusal comes back at once."""


class MemoryStore(BatchStore):
    """One batch in progress, its lines validated, kept in memory as the store's scripts
    keep it in Redis (what the runner uses of it)."""

    def __init__(self, count: int, expires_at: float) -> None:
        self.fields = {
            "id": BATCH,
            "tenant": TENANT,
            "endpoint": "/v1/chat/completions",
            "input_file_id": FILE,
            "lines": str(count),
            "total": str(count),
            "status": "in_progress",
            "expires_at": str(expires_at),
        }
        self.input = {n: _line(n).encode() for n in range(count)}
        self.ids = {n: f"c{n}" for n in range(count)}
        self.output: dict[int, dict[str, object]] = {}
        self.latest: dict[int, int] = {}
        """Each line's attempt."""
        self.retry: dict[int, float] = {}
        """Lines to send again, and when."""
        self.finished = False

    async def active(self) -> list[str]:
        return [] if self.finished else [BATCH]

    async def lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        return True

    async def batch(self, batch_id: str, tenant: str | None = None) -> dict[str, str] | None:
        return dict(self.fields)

    async def update(self, batch_id: str, **fields: str | int) -> None:
        self.fields.update({k: str(v) for k, v in fields.items()})

    async def move(self, batch_id: str, to: str, *sources: str) -> bool:
        moved = self.fields["status"] in sources
        if moved:
            self.fields["status"] = to
        return moved

    async def finish(self, batch_id: str) -> None:
        self.finished = True

    async def add_file(self, fields: dict[str, str], batch_expires_at: float) -> None:
        pass

    async def pages(
        self, file_id: str, numbers: Iterable[int]
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        yield [(n, self.input[n]) for n in numbers if n in self.input]

    async def custom_ids(self, batch_id: str, numbers: list[int]) -> list[str | None]:
        return [self.ids.get(n) for n in numbers]

    async def attempts(self, batch_id: str, numbers: list[int]) -> list[int]:
        return [self.latest.get(n, 0) for n in numbers]

    async def record(self, batch_id: str, tenant: str, outcomes: list[Outcome]) -> list[int]:
        return [self._write(o) for o in outcomes]

    def _write(self, made: Outcome) -> int:
        """RECORD: an outcome of the line's current attempt, once."""
        if made.line in self.output:
            return 0
        attempt = self.latest.get(made.line, 0)
        if made.attempt is not None and made.attempt != attempt:
            return 0
        if made.kind == "retry":
            self.latest[made.line] = attempt + 1
            self.retry[made.line] = made.retry_at
            return 2
        self.retry.pop(made.line, None)
        self.output[made.line] = made.body
        count = "completed" if made.kind == "output" else "failed"
        self.fields[count] = str(int(self.fields.get(count, "0")) + 1)
        return 1

    async def due_retries(self, batch_id: str, now: float, limit: int) -> list[int]:
        due = sorted((at, str(n)) for n, at in self.retry.items() if at <= now)
        return [int(n) for _, n in due[:limit]]

    async def retried(self, batch_id: str, sent: list[tuple[int, int]]) -> None:
        for number, attempt in sent:
            if self.latest.get(number, 0) == attempt:
                self.retry.pop(number, None)

    async def next_retry(self, batch_id: str, after: float) -> float | None:
        return min((at for at in self.retry.values() if at > after), default=None)

    async def waiting_retries(self, batch_id: str) -> int:
        return len(self.retry)


class Admission:
    """A tenant allowed `per_minute` lines a minute, as streams/ratelimit.py allows them: a
    bucket of that many, refilled at that rate; a line past it is refused (rate_limited,
    retry_after_s until the bucket holds one again), the others answered ANSWER_S later."""

    def __init__(self, store: MemoryStore, clock: Clock, per_minute: int) -> None:
        self._store, self._clock, self._per_minute = store, clock, per_minute
        self._level, self._at = float(per_minute), clock()
        self._answers: list[tuple[float, InferenceRequest]] = []
        self.sends: dict[int, int] = {}
        """Sends of each line."""
        self.most_out = 0
        """The most lines admitted and not answered yet, at once."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        now, rate = self._clock(), self._per_minute / 60
        self._level = min(self._per_minute, self._level + (now - self._at) * rate)
        self._at = now
        for request in requests:
            number = _number(request)
            self.sends[number] = self.sends.get(number, 0) + 1
            if self._level >= 1:
                self._level -= 1
                self._answers.append((now + ANSWER_S, request))
                continue
            wait = (1 - self._level) / rate
            limited = ErrorInfo(
                code=ErrorCode.RATE_LIMITED, message="slow", retriable=True, retry_after_s=wait
            )
            await self._reply(request, limited)
        self.most_out = max(self.most_out, len(self._answers))
        return {}

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        raise AssertionError("nothing is cancelled")

    async def answer(self) -> None:
        """Answer the admitted lines whose time came."""
        now = self._clock()
        due = [request for at, request in self._answers if at <= now]
        self._answers = [(at, request) for at, request in self._answers if at > now]
        for request in due:
            await self._reply(request, None)

    async def _reply(self, request: InferenceRequest, error: ErrorInfo | None) -> None:
        """What the collector does with the line's reply."""
        assert request.correlation_id is not None
        parsed = parse_line_id(request.correlation_id)
        assert parsed is not None
        _, number, attempt = parsed
        answer = ChatCompletion(
            id="c",
            created=1,
            model=CATALOG.default,
            choices=[Choice(message={"role": "assistant", "content": "A."}, finish_reason="stop")],
            usage=Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6),
        )
        result = InferenceResult(
            correlation_id=request.correlation_id,
            tenant=TENANT,
            status="ok" if error is None else "error",
            response=answer if error is None else None,
            error=error,
        )
        made = outcome(
            number, attempt, f"c{number}", result, float(self._store.fields["expires_at"])
        )
        await self._store.record(BATCH, TENANT, [made])


def _line(n: int) -> str:
    body = {"model": CATALOG.default, "messages": [{"role": "user", "content": f"q {n}"}]}
    return json.dumps(
        {"custom_id": f"c{n}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _number(request: InferenceRequest) -> int:
    assert request.correlation_id is not None
    parsed = parse_line_id(request.correlation_id)
    assert parsed is not None
    return parsed[1]


async def _run(monkeypatch: pytest.MonkeyPatch, per_minute: int) -> tuple[MemoryStore, Admission]:
    """Run a batch of LINES until it completes, or until it sent its lines 10 times each."""
    clock = Clock()
    fake_time = types.SimpleNamespace(time=clock, monotonic=clock)
    monkeypatch.setattr(runner, "time", fake_time)
    monkeypatch.setattr(collector, "time", fake_time)
    store = MemoryStore(LINES, clock.now + 86_400)
    admission = Admission(store, clock, per_minute)
    door = Runner(store, admission, CATALOG, "door-1", Pace(in_flight=IN_FLIGHT))
    while store.fields["status"] != "completed" and sum(admission.sends.values()) < 10 * LINES:
        await door.tick()
        clock.now += TICK_S
        await admission.answer()
    return store, admission


@pytest.mark.parametrize("per_minute", [12, 60])
def test_a_rate_limited_batch_sends_each_line_a_few_times_and_completes(
    monkeypatch: pytest.MonkeyPatch, per_minute: int
) -> None:
    """A window of 100 lines for a tenant allowed 12 (60) a minute: refusals narrow it and
    hold the batch until their wait is over, so a line goes 2.4 (1.8) times on average;
    sending every due line at each tick sent each one 90 (50) times."""
    store, admission = asyncio.run(_run(monkeypatch, per_minute))
    sends = sum(admission.sends.values())
    assert sends < 3 * LINES, f"{sends / LINES:.1f} sends a line"
    assert store.fields["status"] == "completed"
    assert (store.fields["completed"], store.fields.get("failed")) == (str(LINES), None)
    assert sorted(store.output) == list(range(LINES))  # every line answered, once
    assert admission.most_out <= IN_FLIGHT


def test_a_batch_that_admission_takes_whole_keeps_its_full_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without refusals, a batch goes as before: a full window of lines at once."""
    store, admission = asyncio.run(_run(monkeypatch, 10_000))
    assert store.fields["status"] == "completed"
    assert admission.most_out == IN_FLIGHT  # the first look sent a full window
    assert set(admission.sends.values()) == {1}
