"""Drives each batch through its statuses: validating -> in_progress -> finalizing ->
completed (or failed, expired, cancelling -> cancelled). Every front door runs one; a lease in
Redis gives each batch one driver at a time, and all progress is in Redis, so a front door
that stops or dies mid-batch is followed by another (or itself, restarted) where it left."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from gateway import metrics
from gateway.batch.lines import ENDPOINTS, Line, error_line, failed_line, read_line
from gateway.batch.store import PAGE, BatchStore, Outcome
from llmq.throttle import apart
from schemas.catalog import Catalog
from schemas.errors import LlmqError
from schemas.redact import explain
from schemas.request import InferenceRequest

log = logging.getLogger(__name__)

MAX_ERRORS = 100
"""Validation errors listed on a failed batch (the first ones, by line)."""
EXPIRED = ("batch_expired", "This line was not run before the batch's completion window ended.")
OVERTIME_S = 30.0
"""A line's deadline is this long after its batch's: the batch ends its lines itself when it
expires (batch_expired, as OpenAI's), before llmq would answer them `expired`."""
CANCELLED = ("batch_cancelled", "This line was not run: the batch was cancelled.")
MAX_FAILED_STEPS = 3
"""Steps of a batch that may fail in a row before its front door gives the lease up and sits
out a lease's length (Pace.lease_s), so another door takes the batch: a door that reaches Redis
but not Kafka (or meets a bug on every step) would otherwise renew the lease until the batch
expires. A blip fails fewer; the door may take the batch again later (the only door does)."""


class Publisher(Protocol):
    """Where lines go: llmq.requests (AsyncClient in production)."""

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        """Publish the requests; those Kafka refused for their size, by correlation id."""

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None: ...


@dataclass(frozen=True)
class Pace:
    """How the runner goes: the most lines in flight per batch (its window's ceiling, see
    _Window), how long a cancel waits for them, how long a lease lasts, how often each batch
    is looked at."""

    in_flight: int = 1000
    cancel_grace_s: float = 60.0
    lease_s: float = 15.0
    tick_s: float = 0.5


def line_id(batch_id: str, number: int, attempt: int) -> str:
    """The correlation_id of a line's attempt."""
    return f"{batch_id}.{number}.{attempt}"


@dataclass
class _Window:
    """How many lines of a batch may be unanswered at once, fitted to what admission takes
    (additive increase, multiplicative decrease, as TCP's congestion window): each line
    newly refused for a while (rate limit, budget hold) halves it, at least 1, and a look
    that finds such lines holds the batch until the next waiting line is due; otherwise
    each line answered since widens it by one, up to Pace.in_flight. Without it, lines
    refused together are due together and sent again together, and all but a few are
    refused again, at every look, through every tenant's admission. Kept in memory by the
    door that drives the batch (Runner._window)."""

    size: int
    done: int
    """Lines answered (completed, failed) at the last look."""
    waiting: int
    """Lines waiting to be sent again after the last look's sends: more at this look are
    lines refused since."""
    resume_at: float = 0.0
    """No line goes before (time.time()): admission said the tenant's lines wait until then."""

    def look(self, done: int, waiting: int, ceiling: int) -> bool:
        """Fit the window to what came since the last look; whether lines were refused."""
        refused = waiting - self.waiting
        if refused > 0:
            self.size = max(1, self.size >> refused)
        else:
            self.size = min(ceiling, self.size + max(0, done - self.done))
        self.done, self.waiting = done, waiting
        return refused > 0


class Runner:
    """One front door's driver of batches."""

    def __init__(
        self,
        store: BatchStore,
        publisher: Publisher,
        catalog: Catalog,
        owner: str,
        pace: Pace | None = None,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._catalog = catalog
        self._owner = owner
        self._pace = pace or Pace()
        self._held: set[str] = set()
        self._failed: dict[str, int] = {}
        """Steps of each held batch that failed in a row."""
        self._yielded: dict[str, float] = {}
        """Batches given up, and until when (time.monotonic()) this door leaves them alone:
        a lease's length, time for every healthy door to look (one look may miss it)."""
        self._windows: dict[str, _Window] = {}
        """The window of each batch this door holds (see _Window)."""
        self._foreign: set[str] = set()
        """Batches of an endpoint this door does not know (see _leave), each logged once."""

    async def run(self) -> None:
        """Until cancelled: drive every active batch this front door holds the lease of."""
        try:
            while True:
                await self.tick()
                await asyncio.sleep(self._pace.tick_s)
        finally:
            with contextlib.suppress(RedisError):
                for batch_id in self._held:
                    await self._store.release(batch_id, self._owner)

    async def tick(self) -> None:
        """One look at every active batch; a failure is logged and retried next tick."""
        try:
            active = await self._store.active()
        except RedisError as exc:
            log.warning("batches wait: Redis is unavailable (%s)", explain(exc))
            return
        self._held.intersection_update(active)  # one that ended is no longer held
        self._windows = {b: w for b, w in self._windows.items() if b in self._held}
        self._failed = {b: n for b, n in self._failed.items() if b in active}
        self._foreign.intersection_update(active)
        now = time.monotonic()
        self._yielded = {b: t for b, t in self._yielded.items() if t > now and b in active}
        for batch_id in active:
            if batch_id in self._yielded:
                continue
            try:
                if await self._store.lease(batch_id, self._owner, self._pace.lease_s):
                    self._held.add(batch_id)
                    await self._leased_step(batch_id)
                else:
                    self._held.discard(batch_id)
                self._failed.pop(batch_id, None)  # a step went, or another door drives it
            except (RedisError, KafkaError, OSError) as exc:
                log.warning("batch %s waits: %s", batch_id, explain(exc))
                await self._step_failed(batch_id)
            except Exception:  # a bug must not stop every other batch: the next tick retries
                log.exception("batch %s failed a step; trying again", batch_id)
                await self._step_failed(batch_id)

    async def _step_failed(self, batch_id: str) -> None:
        """Count a failed step of a held batch; at MAX_FAILED_STEPS in a row, give its lease
        up for another front door."""
        if batch_id not in self._held:
            return
        self._failed[batch_id] = failed = self._failed.get(batch_id, 0) + 1
        if failed < MAX_FAILED_STEPS:
            return
        log.warning(
            "batch %s: %d steps failed in a row; its lease is given up for another front door",
            batch_id,
            failed,
            extra=apart(batch_id),
        )
        del self._failed[batch_id]
        self._held.discard(batch_id)
        self._yielded[batch_id] = time.monotonic() + self._pace.lease_s
        with contextlib.suppress(RedisError):  # else the lease lapses
            await self._store.release(batch_id, self._owner)

    async def _leased_step(self, batch_id: str) -> None:
        """A step, its lease renewed every third of its length meanwhile: a step that takes
        longer (Kafka slow to take a page, a large file read) would let a second door take
        the batch and send the same lines again. A renewal that finds the lease another
        door's (this one's renewals failed for a lease's length) stops the step."""
        step = asyncio.create_task(self.step(batch_id))
        try:
            while not (await asyncio.wait({step}, timeout=self._pace.lease_s / 3))[0]:
                with contextlib.suppress(RedisError):  # renewed at the next third
                    if not await self._store.lease(batch_id, self._owner, self._pace.lease_s):
                        log.warning(
                            "batch %s: another front door took it mid-step",
                            batch_id,
                            extra=apart(batch_id),
                        )
                        self._held.discard(batch_id)
                        return
            step.result()
        finally:
            step.cancel()
            await asyncio.gather(step, return_exceptions=True)

    async def step(self, batch_id: str) -> None:
        """Move one batch on as far as it goes now."""
        fields = await self._store.batch(batch_id)
        # Expired, or lost (flushed, evicted): no status is what writes after a loss left.
        if fields is None or "status" not in fields:
            log.warning("batch %s is gone from Redis: dropped", batch_id, extra=apart(batch_id))
            await self._store.forget(batch_id)
            return
        status, answered = fields["status"], _answered(fields)
        # A batch whose every line has its outcome completes, even if it is looked at late.
        expired = time.time() >= float(fields["expires_at"]) and not answered
        running = status in ("validating", "in_progress")
        if running and expired:
            await self._close(fields, "expired", EXPIRED, ("validating", "in_progress"))
        elif running and not answered and fields["endpoint"] not in ENDPOINTS:
            await self._leave(batch_id, fields["endpoint"])
        elif status == "validating":
            await self._validate(fields)
        elif status == "in_progress":
            await self._advance(fields)
        elif status == "cancelling":
            await self._cancelling(fields)
        elif status == "finalizing":
            await self._finalize(fields)
        else:
            await self._store.finish(batch_id)

    async def _leave(self, batch_id: str, endpoint: str) -> None:
        """Give a batch of an endpoint this door does not know (a newer door made it, in a
        rollout) back untouched, and leave it alone a lease's length: its lines would read
        as bad here, failing it, and its answers would be written in another endpoint's
        shape. A door that knows the endpoint validates it and sends its lines; any door
        expires, cancels and ends it (error lines and files, the same for every endpoint),
        even with every door that knows the endpoint rolled back."""
        if batch_id not in self._foreign:
            self._foreign.add(batch_id)
            log.warning(
                "batch %s calls %s, which this front door does not know: a newer one runs it",
                batch_id,
                endpoint,
                extra=apart(batch_id),
            )
        self._held.discard(batch_id)
        self._yielded[batch_id] = time.monotonic() + self._pace.lease_s
        await self._store.release(batch_id, self._owner)

    # validating

    async def _validate(self, fields: Mapping[str, str]) -> None:
        """Read every line: a batch with a bad line fails, naming the lines; else it runs."""
        batch_id, count = fields["id"], int(fields["lines"])
        if await self._input_gone(fields):
            return
        check = _Check()
        async for page in self._store.pages(fields["input_file_id"], range(count)):
            await self._validate_page(fields, page, check)
            await asyncio.sleep(0)  # a large file takes a while: let other requests go on
        errors = check.verdict()
        if errors:
            await self._fail(batch_id, errors)
            return
        if await self._input_gone(fields):  # deleted while it was read: lines were missed
            return
        await self._store.update(batch_id, total=len(check.seen), model=str(check.models.pop()))
        await self._store.move(batch_id, "in_progress", "validating")

    async def _validate_page(
        self, fields: Mapping[str, str], page: list[tuple[int, bytes]], check: _Check
    ) -> None:
        """Read these lines into `check`; record each good one's custom_id (and what a
        response's line asked, which its output echoes)."""
        named: dict[int, str] = {}
        asked: dict[int, dict[str, Any]] = {}
        for number, raw in page:
            try:
                line = self._read(fields, number, raw, 0)
            except LlmqError as exc:
                check.errors.append(_error(exc.code.value, exc.message, number))
                continue
            check.add(number, line)
            named[number] = line.custom_id
            if line.asked is not None:
                asked[number] = line.asked
        await self._store.name_lines(fields["id"], named, asked)

    async def _input_gone(self, fields: Mapping[str, str]) -> bool:
        """Whether the input file is gone (deleted as the batch was made, or expired): the
        batch then fails saying so."""
        if await self._store.file(fields["input_file_id"], fields["tenant"]) is not None:
            return False
        why = f"the input file {fields['input_file_id']} was deleted or has expired"
        await self._fail(fields["id"], [_error("missing_input_file", why, None)])
        return True

    async def _fail(self, batch_id: str, errors: list[dict[str, object]]) -> None:
        """A batch that cannot run: failed, with (the first MAX_ERRORS of) its errors."""
        await self._store.update(batch_id, errors=json.dumps(errors[:MAX_ERRORS]))
        if await self._store.move(batch_id, "failed", "validating"):
            metrics.BATCHES.labels("failed").inc()
            await self._store.finish(batch_id)

    # in_progress

    async def _advance(self, fields: Mapping[str, str]) -> None:
        """Send lines as the batch's window allows; finalize once all are answered."""
        batch_id = fields["id"]
        cursor = int(fields.get("cursor", 0))
        window = await self._window(fields)
        if time.time() >= window.resume_at:
            cursor = await self._send_lines(fields, window)
        finished = _answered(fields, cursor)
        if finished and await self._store.move(batch_id, "finalizing", "in_progress"):
            await self._finalize({**fields, "status": "finalizing"})

    async def _window(self, fields: Mapping[str, str]) -> _Window:
        """The batch's window, fitted to this look (see _Window). A door that takes a batch
        over starts from the full window or, if lines wait to be sent again (the tenant is
        at its limit), from one line, widened as lines are answered."""
        batch_id, done = fields["id"], _done(fields)
        waiting = await self._store.waiting_retries(batch_id)
        window = self._windows.get(batch_id)
        if window is None:
            size = self._pace.in_flight if waiting == 0 else 1
            window = self._windows[batch_id] = _Window(size, done, waiting)
        if window.look(done, waiting, self._pace.in_flight):
            now = time.time()
            window.resume_at = await self._store.next_retry(batch_id, now) or now
        return window

    async def _send_lines(self, fields: Mapping[str, str], window: _Window) -> int:
        """Send the lines due again, then new ones, as far as the window goes; the cursor.
        Lines refused for a while keep their places in it as they wait: no new line goes
        while the tenant is at its limit."""
        sent, done = int(fields.get("sent", 0)), _done(fields)
        cursor, count = int(fields.get("cursor", 0)), int(fields["lines"])
        # 1) Lines whose wait is over, while fewer than the window are out (not waiting).
        room = window.size - (sent - done - window.waiting)
        if room > 0:
            window.waiting -= await self._send_retries(fields, room)
        # 2) New lines, while fewer than the window are unanswered, waiting or out.
        room = window.size - (sent - done)
        while room > 0 and cursor < count:
            end = min(count, cursor + min(room, PAGE))
            sent += await self._send_new(fields, range(cursor, end), sent)
            room -= end - cursor
            cursor = end
        return cursor

    async def _in_flight(self, fields: Mapping[str, str]) -> int:
        waiting = await self._store.waiting_retries(fields["id"])
        return int(fields.get("sent", 0)) - _done(fields) - waiting

    async def _send_new(self, fields: Mapping[str, str], numbers: range, sent: int) -> int:
        """Send these lines, a page at a time (BatchStore.pages); how many there were (blank
        ones are not lines). The cursor moves once the broker has them: a front door that dies
        in between sends them again, and each line still gets one outcome."""
        count = 0
        async for page in self._store.pages(fields["input_file_id"], numbers):
            await self._send(fields, [(n, 0, raw) for n, raw in page])
            count += len(page)
        await self._store.update(fields["id"], cursor=numbers.stop, sent=sent + count)
        return count

    async def _send_retries(self, fields: Mapping[str, str], most: int) -> int:
        """Send again the lines refused for a while (rate limits, budget holds) whose time
        came; how many."""
        batch_id = fields["id"]
        due = await self._store.due_retries(batch_id, time.time(), most)
        if not due:
            return 0
        attempts = dict(zip(due, await self._store.attempts(batch_id, due), strict=True))
        async for page in self._store.pages(fields["input_file_id"], due):
            await self._send(fields, [(n, attempts[n], raw) for n, raw in page])
        await self._store.retried(batch_id, list(attempts.items()))
        return len(due)

    async def _send(self, fields: Mapping[str, str], lines: list[tuple[int, int, bytes]]) -> None:
        """Publish the lines' requests; a line that no longer reads (the catalog changed), or
        that Kafka refused for its size, gets its error line instead."""
        requests, read, refused = [], [], []
        for number, attempt, raw in lines:
            try:
                requests.append(self._read(fields, number, raw, attempt).request)
                read.append((number, attempt))
            except LlmqError as exc:
                refused.append(await self._error(fields, number, attempt, exc))
        too_large = await self._publisher.publish(requests)
        metrics.BATCH_LINES.labels("sent").inc(len(requests) - len(too_large))
        for (number, attempt), request in zip(read, requests, strict=True):
            if request.correlation_id in too_large:
                error = too_large[request.correlation_id]
                refused.append(await self._error(fields, number, attempt, error))
        if refused:
            await self._store.record(fields["id"], fields["tenant"], refused)

    async def _error(
        self, fields: Mapping[str, str], number: int, attempt: int, exc: LlmqError
    ) -> Outcome:
        """The error line of a line's attempt that was not sent: a request's failure, as a
        worker's error reply is."""
        custom_id = (await self._store.custom_ids(fields["id"], [number]))[0] or ""
        attempt_id = line_id(fields["id"], number, attempt)
        return Outcome(
            number, attempt, "error", failed_line(custom_id, attempt_id, exc.code, exc.message)
        )

    def _read(self, fields: Mapping[str, str], number: int, raw: bytes, attempt: int) -> Line:
        return read_line(
            raw,
            tenant=fields["tenant"],
            catalog=self._catalog,
            deadline=float(fields["expires_at"]) + OVERTIME_S,
            correlation_id=line_id(fields["id"], number, attempt),
            endpoint=fields["endpoint"],
        )

    # cancelling, expiry, the end

    async def _cancelling(self, fields: Mapping[str, str]) -> None:
        """Tell the workers to drop the lines in flight (once); when they are answered, or
        the grace time is over, the rest is cancelled."""
        if "cancels_sent" not in fields:
            await self._cancel_sent(fields)
            await self._store.update(fields["id"], cancels_sent=1)
        late = time.time() > float(fields["cancelling_at"]) + self._pace.cancel_grace_s
        if late or await self._in_flight(fields) <= 0:
            await self._close(fields, "cancelled", CANCELLED, ("cancelling",))

    async def _cancel_sent(self, fields: Mapping[str, str]) -> None:
        """Tell the workers that nobody waits for the lines sent and not answered yet."""
        for correlation_id in await self._sent_unanswered(fields):
            await self._publisher.cancel(correlation_id, tenant=fields["tenant"])

    async def _sent_unanswered(self, fields: Mapping[str, str]) -> list[str]:
        """The correlation_ids of the lines sent and not answered yet (at most `in_flight`)."""
        batch_id, cursor = fields["id"], int(fields.get("cursor", 0))
        found = []
        async for page in self._store.unfinished(batch_id):
            numbers = [n for n, _ in page if n < cursor]
            attempts = await self._store.attempts(batch_id, numbers)
            found += [line_id(batch_id, n, a) for n, a in zip(numbers, attempts, strict=True)]
        return found

    async def _close(
        self, fields: Mapping[str, str], status: str, why: tuple[str, str], sources: tuple[str, ...]
    ) -> None:
        """End a batch early: every line without an outcome gets an error line saying why
        (an expired batch's lines in flight are cancelled first). One ended while validating
        has no total yet: its total is the lines read so far, each now with its outcome, so
        `completed + failed` stays within `total`."""
        batch_id = fields["id"]
        sent = await self._sent_unanswered(fields) if status == "expired" else []
        async for page in self._store.unfinished(batch_id):
            outcomes = [
                Outcome(n, None, "error", error_line(custom_id, line_id(batch_id, n, 0), *why))
                for n, custom_id in page
            ]
            await self._store.record(batch_id, fields["tenant"], outcomes)
        for correlation_id in sent:  # after their error lines: a cancelled reply is too late
            await self._publisher.cancel(correlation_id, tenant=fields["tenant"])
        fresh = await self._store.batch(batch_id) or fields
        if "total" not in fresh:
            total = int(fresh.get("completed", 0)) + int(fresh.get("failed", 0))
            await self._store.update(batch_id, total=total)
        await self._files(fresh)
        if await self._store.move(batch_id, status, *sources):
            log.info("batch %s %s", batch_id, status)
            metrics.BATCHES.labels(status).inc()
            await self._store.finish(batch_id)

    async def _finalize(self, fields: Mapping[str, str]) -> None:
        await self._files(fields)
        if await self._store.move(fields["id"], "completed", "finalizing"):
            log.info("batch %s completed", fields["id"])
            metrics.BATCHES.labels("completed").inc()
            await self._store.finish(fields["id"])

    async def _files(self, fields: Mapping[str, str]) -> None:
        """The output and error files of a batch, each once it has a line."""
        batch_id, hexa = fields["id"], fields["id"].removeprefix("batch_")
        made: dict[str, str] = {}
        for part, count, name in (("output", "completed", "output"), ("errors", "failed", "error")):
            if int(fields.get(count, 0)) == 0:
                continue
            file_id = f"file-{name}-{hexa}"
            await self._store.add_file(
                {
                    "id": file_id,
                    "tenant": fields["tenant"],
                    "filename": f"{batch_id}_{name}.jsonl",
                    "purpose": "batch_output",
                    "bytes": fields.get(f"{count}_bytes", "0"),
                    "created_at": str(int(time.time())),
                    "batch": batch_id,
                    "part": part,
                },
                float(fields["expires_at"]),
            )
            made[f"{name}_file_id"] = file_id
        if made:
            await self._store.update(batch_id, **made)


@dataclass
class _Check:
    """What validation found across a file: the errors, custom_ids and models."""

    errors: list[dict[str, object]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    models: set[str | None] = field(default_factory=set)

    def add(self, number: int, line: Line) -> None:
        if line.custom_id in self.seen:
            why = f"custom_id {line.custom_id!r} is not unique in the file"
            self.errors.append(_error("duplicate_custom_id", why, number))
        self.seen.add(line.custom_id)
        self.models.add(line.request.model)

    def verdict(self) -> list[dict[str, object]]:
        """The errors, a file of several models first."""
        if len(self.models) > 1:
            why = (
                f"a batch's lines all use one model; this file has {sorted(map(str, self.models))}"
            )
            return [_error("mixed_models", why, None), *self.errors]
        return self.errors


def _done(fields: Mapping[str, str]) -> int:
    """A batch's lines with their outcome."""
    return int(fields.get("completed", 0)) + int(fields.get("failed", 0))


def _answered(fields: Mapping[str, str], cursor: int | None = None) -> bool:
    """Whether a batch in progress has sent every line (its cursor, unless given) and every
    line has its outcome."""
    if fields["status"] != "in_progress":
        return False
    done = _done(fields)
    sent_all = (int(fields.get("cursor", 0)) if cursor is None else cursor) >= int(fields["lines"])
    return sent_all and done >= int(fields["total"])


def _error(code: str, message: str, number: int | None) -> dict[str, object]:
    """A validation error as OpenAI lists it (lines count from 1)."""
    return {
        "code": code,
        "message": message,
        "param": None,
        "line": None if number is None else number + 1,
    }
