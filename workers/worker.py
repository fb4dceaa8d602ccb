"""The worker loop: records from a model's lane topics into the engine, results out.

Fetched records wait in per-lane buffers (workers/lanes.py) that decide which one starts
next: higher lanes first, with headroom kept for them and a minimum share for lower lanes.
Buffers are bounded and a full lane's partitions are paused, so a backlog stays in Kafka.
A record's offset counts as in flight from its fetch and is committed only after the
completion and metering event it produced are acknowledged by the broker (workers/publish.py).
A partition nothing was taken from has its starting position committed, so that the group,
and with it the front door's way to the model, outlives its last worker.
Its starts are counted, so one whose generation kills the worker every time is dead-lettered
after a few (workers/starts.py, workers/solo.py). A rebalance lets the generations of
revoked partitions finish within the drain bound; what outlives it runs on until the
assignment, and only what went to another worker is aborted (workers/handover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from contextlib import suppress
from functools import partial
from typing import Protocol, TypeAlias, runtime_checkable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from llmq.futures import read_outcome
from llmq.record_limits import RECORD_LIMIT
from schemas.catalog import ModelSpec, auto_refused
from schemas.errors import FALLBACK_CODES, ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.redact import describe
from schemas.request import ChatBody
from schemas.work import CascadeBody, Completion, WorkItem
from workers import metrics
from workers.cancels import Cancellations, cancel_error
from workers.claims import Claim
from workers.engine import Engine
from workers.group_starts import GroupStarts
from workers.handover import Handover
from workers.inflight import InFlight
from workers.lanes import LanePolicy, LaneScheduler, lane_of
from workers.offsets import OffsetTracker
from workers.publish import Publisher
from workers.solo import Solo
from workers.starts import DEFAULT_MAX_STARTS, StartCounts
from workers.tokens import DeltaPolicy, DeltaStream

log = logging.getLogger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]

POLL_TIMEOUT_MS = 100
"""The longest one fetch waits for records; also how soon a stop request is noticed."""


@runtime_checkable
class Judged(Protocol):
    """An engine whose server a circuit breaker judges (OpenAIEngine)."""

    def timed_out(self, request_id: str) -> None:
        """The worker cut the generation `request_id` at the model's timeout_s before any
        step came."""
        ...


class Worker:
    """Serves one model: one asyncio task per generation, one loop that feeds them."""

    def __init__(
        self,
        spec: ModelSpec,
        engine: Engine,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        *,
        worker_id: str,
        commit_interval_s: float = 1.0,
        drain_timeout_s: float = 30.0,
        lanes: LanePolicy | None = None,
        starts: StartCounts,
        max_starts: int = DEFAULT_MAX_STARTS,
        cancellations: Cancellations | None = None,
        deltas: DeltaPolicy | None = None,
        claim: Claim | None = None,
        record_limit: int = RECORD_LIMIT,
        dead_letter_limit: int = RECORD_LIMIT,
    ) -> None:
        self._spec = spec
        self._engine = engine
        self._consumer = consumer
        self._producer = producer
        self._outcomes = Publisher(producer, spec, worker_id, record_limit, dead_letter_limit)
        self._worker_id = worker_id
        self._commit_interval_s = commit_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._lanes: LaneScheduler[TopicPartition, Record] = LaneScheduler(
            lanes or LanePolicy(), spec.max_inflight
        )
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._group_starts = GroupStarts(consumer, self._fail)
        self._cancellations = cancellations or Cancellations()
        self._deltas = deltas or DeltaPolicy()
        self._claim = claim
        self._starts = starts
        self._max_starts = max_starts
        self._solo = Solo()
        self._tasks: dict[asyncio.Task[None], tuple[TopicPartition, int]] = {}
        """Each generation's record, by its partition and offset."""
        self._handover: Handover[TopicPartition] = Handover()
        self._concluding: set[asyncio.Task[None]] = set()
        """Generations that have their outcome and are publishing it: never aborted."""
        self._made_room = asyncio.Event()
        self._stopping = False
        self._fatal: BaseException | None = None

    def rebalance_listener(self) -> ConsumerRebalanceListener:
        """Finish and commit before partitions move to another worker."""
        return _Rebalance(self)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set, then drain.

        An unexpected error in any generation (a dead engine, a broker that will not take
        the outputs) or in a lookup of where partitions start stops the worker: it drains
        the rest and re-raises, leaving that record uncommitted for the next worker.
        """
        try:
            await self._serve_until(stop)
            self._stopping = True
            await self._drain()
        finally:
            await self._group_starts.end()
        if self._fatal is not None:
            raise self._fatal

    async def _serve_until(self, stop: asyncio.Event) -> None:
        """The loop that fetches, starts and commits, until `stop` or a fatal error."""
        loop = asyncio.get_running_loop()
        last_commit = loop.time()
        while not stop.is_set() and self._fatal is None:
            # 1) Fetch only for lanes whose buffer has room; a full lane's partitions pause.
            # With every lane full, all are: the fetch, made at once, returns nothing, but
            # without it aiokafka would leave the group after max_poll_interval_ms.
            fetching = self._pause_full_lanes()
            self._made_room.clear()
            batches = await self._consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS if fetching else 0,
                max_records=max(1, self._lanes.room()),
            )
            # 2) Buffer what came; its offsets are in flight from now on.
            for tp, records in batches.items():
                for record in records:
                    if self._handover.holds(tp, record.offset):
                        continue  # fetched again after a rebalance, and still running
                    self._tracker.started(tp, record.offset)
                    self._lanes.push(lane_of(tp.topic), tp, record)
            if not fetching:
                # Every buffer is full, so the engine is too: wait for a start to make room.
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._made_room.wait(), POLL_TIMEOUT_MS / 1000)
            # 3) Start what the lanes allow (finished generations start more on their own).
            self._dispatch()
            # 4) Commit what has finished, every commit interval.
            if loop.time() - last_commit >= self._commit_interval_s:
                await self.commit()
                last_commit = loop.time()

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Commit, per partition, up to the oldest record still in flight, with the records
        it runs and its read position as the metadata (schemas/work.py progress; also
        where only they changed, so the autoscaler tells records done behind a long
        generation from waiting ones); and, but for `only` some, where each partition the
        group has no offset for starts (workers/group_starts.py), with no metadata."""
        assigned = self._consumer.assignment()
        committable = self._tracker.committable(self._tasks.values())
        offsets = {
            tp: off
            for tp, off in committable.items()
            if tp in assigned and (only is None or tp in only)
        }
        if only is None:  # not past a record in flight: only where nothing was taken
            starts = self._group_starts.positions(committable.keys(), stopping=self._stopping)
            offsets |= {tp: (start, "") for tp, start in starts.items()}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.warning("offset commit failed, will retry: %s", exc)
            return
        self._tracker.committed(offsets)
        self._group_starts.committed(offsets)

    async def finish(self, tps: set[TopicPartition]) -> None:
        """Let the generations of partitions that are leaving finish (within the drain bound)
        so that their offsets commit now; otherwise the next owner would generate them again.
        What does not finish runs on until the assignment (`take_back`). Their buffered
        records go first, so that no finishing generation starts one of them."""
        dropped = self._lanes.drop(tps)
        if dropped:
            log.info("dropped %d buffered records of revoked partitions", dropped)
        self._count_lanes()
        leaving = {task: where for task, where in self._tasks.items() if where[0] in tps}
        if leaving:
            what = "generations of revoked partitions"
            unfinished = await self._settle(set(leaving), what)
            if unfinished:
                log.info("%d %s run on until the assignment", len(unfinished), what)
            self._handover.park({task: leaving[task] for task in unfinished})
        await self.commit(only=tps)

    def forget(self, tps: set[TopicPartition]) -> None:
        """Partitions revoked (after `finish`): their unfinished records go to their next
        owner, or come back with their partition."""
        self._group_starts.rebalanced()
        self._tracker.forget(tps)

    async def take_back(self, assigned: set[TopicPartition]) -> None:
        """The assignment after a rebalance: generations still running of a partition that
        came back are kept (in flight again, so that their offsets stay uncommitted); those
        of a partition that went to another worker are aborted and handed back (a start of
        it there a moment before this is a duplicate generation, not a loss)."""
        self._group_starts.rebalanced()
        kept, moved = self._handover.assigned(assigned)
        for tp, offset in kept:
            self._tracker.started(tp, offset)
        if kept:
            log.info("kept %d generations of partitions assigned back here", len(kept))
        await self._abort(set(moved) - self._concluding, "generations of partitions that moved")

    def _pause_full_lanes(self) -> bool:
        """Pause the partitions of full lanes, resume the others; False when all are full."""
        fetchable = self._lanes.fetchable()
        assigned = self._consumer.assignment()
        full = {tp for tp in assigned if lane_of(tp.topic) not in fetchable}
        self._consumer.pause(*full)
        self._consumer.resume(*(assigned - full))
        return bool(fetchable)

    def _dispatch(self) -> None:
        """Start buffered records, in the lanes' order, while the engine has room for them."""
        while not self._stopping and self._fatal is None:
            picked = self._lanes.pop()
            if picked is None:
                break
            lane, tp, record = picked
            task = asyncio.create_task(self._serve(tp, record), name=f"serve-{record.offset}")
            self._tasks[task] = (tp, record.offset)
            task.add_done_callback(partial(self._finished, lane))
            metrics.STARTED.labels(lane.value).inc()
            self._made_room.set()
        metrics.IN_FLIGHT.set(len(self._tasks))
        self._count_lanes()

    def _count_lanes(self) -> None:
        for lane in Lane:
            metrics.BUFFERED.labels(lane.value).set(self._lanes.buffered(lane))
            metrics.LANE_IN_FLIGHT.labels(lane.value).set(self._lanes.running(lane))

    def _finished(self, lane: Lane, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._handover.finished(task)
        self._concluding.discard(task)
        self._lanes.finished(lane)
        if not task.cancelled() and task.exception() is not None:
            self._fatal = self._fatal or task.exception()
        self._dispatch()

    async def _serve(self, tp: TopicPartition, record: Record) -> None:
        """One record, start to acknowledged outputs; only then is its offset done."""
        try:
            work = WorkItem.model_validate_json(record.value or b"")
        except ValidationError as exc:
            error = LlmqError(ErrorCode.INVALID_REQUEST, f"unreadable work item: {describe(exc)}")
            await self._outcomes.dead_letter(record, error)
            metrics.DEAD_LETTERS.labels("unreadable").inc()
            # Its client is answered all the same, through the stream processor that wrote it
            # (its retries come back to this worker and fail the same).
            newer = LlmqError(
                ErrorCode.INTERNAL_ERROR,
                f"a worker cannot read this work item ({describe(exc)}), probably written by a "
                "newer llmq: upgrade the workers before the stream processor and front doors",
            )
            await self._outcomes.unreadable(record, newer)
            self._tracker.done(tp, record.offset)
            return
        where = (record.topic, record.partition, record.offset)
        # A record answered before a rebalance moved it here is not generated again.
        if await self._starts.answered(*where, work.request.correlation_id):
            log.info("skipping %s/%d@%d: answered before its partition moved", *where)
            metrics.REANSWERS_SKIPPED.inc()
            self._tracker.done(tp, record.offset)
            return
        # A retry's backoff, before its start is counted or it takes its turn in the engine
        # (it still holds its lane's slot: the record stays in flight, uncommitted).
        if work.not_before is not None:
            await asyncio.sleep(backoff_left(work))
        # Another id at every start: the engine's, and the streamed pieces' generation.
        start = uuid.uuid4().hex[:8]
        state = InFlight.from_work(
            work, f"{work.request.correlation_id}@{'/'.join(map(str, where))}#{start}"
        )
        metrics.QUEUE.labels(work.request.lane.value).observe(
            max(0.0, state.started_at - work.queued_since)
        )
        # 1) A record that took its worker down at every start goes no further.
        crashes = await self._starts.count(*where)
        if crashes >= self._max_starts:
            await self._crash_loop(record, state, crashes)
        else:
            # Its last start before the bound runs alone: then it can only blame itself.
            await self._counted(where, state, alone=crashes == self._max_starts - 1)
        await self._starts.end(*where, work.request.correlation_id)
        self._tracker.done(tp, record.offset)

    async def _counted(self, where: tuple[str, int, int], state: InFlight, alone: bool) -> None:
        """Generate and publish, `alone` in the engine or beside the others. The start counts
        once it has its turn, and a hand-back (a drain) gives it back: only crashes stay.
        Once the outcome exists it is published whatever happens: aborting it then would
        hand back a record that is already answered."""
        async with self._solo.alone() if alone else self._solo.shared():
            try:  # a hand-back in begin's round trip gives back what it may have counted
                await self._starts.begin(*where)
                completion = await self._generate(state)
            except asyncio.CancelledError:
                await self._starts.hand_back(*where)
                raise
            task = asyncio.current_task()
            if task is not None:
                self._concluding.add(task)
            await self._outcomes.publish(completion, state)

    async def _crash_loop(self, record: Record, state: InFlight, crashes: int) -> None:
        """Dead-letter a record whose generation took its worker down `crashes` times, and
        answer it with that failure; not retried, as it would do the same again."""
        error = LlmqError(
            ErrorCode.CRASH_LOOP,
            f"its generation took the worker down {crashes} times; it was dead-lettered "
            f"after {crashes} starts without an outcome (LLMQ_MAX_STARTS={self._max_starts})",
            retried=True,
        )
        task = asyncio.current_task()
        if task is not None:  # its dead letter and its answer go out whole, as an outcome's
            self._concluding.add(task)
        await self._outcomes.dead_letter(record, error)
        metrics.DEAD_LETTERS.labels("crash_loop").inc()
        metrics.GENERATIONS.labels(error.code.value).inc()
        await self._outcomes.publish(state.failure(error, self._worker_id, time.time()), state)

    def _count_uncompressed(self, state: InFlight) -> asyncio.Task[int | None] | None:
        """The count of the prompt's tokens as the app sent it, where it was compressed (its
        outcome read when nobody awaits it: the generation failed or was cut off)."""
        if state.work.uncompressed is None:
            return None
        count = self._engine.prompt_tokens
        tools = state.work.request.body.tools
        counting = asyncio.create_task(asyncio.to_thread(count, state.work.uncompressed, tools))
        counting.add_done_callback(read_outcome)
        return counting

    async def _generate(self, state: InFlight) -> Completion:
        """Run the generation; every outcome but a dead engine becomes a Completion."""
        # 1) Refuse what must not start: another model's work, or work already expired.
        error = await self._unstartable(state)
        # 2) Generate, bounded by the model's timeout or the request's deadline; the app's own
        # prompt (compressed for the engine) is counted meanwhile, in a thread (a long one's
        # template would block the loop), so the answer never waits for it.
        counting = None if error is not None else self._count_uncompressed(state)
        deltas = self._delta_stream(state)
        if error is None:
            error = await self._run(state, deltas)
        streamed = {"streamed": deltas is not None and deltas.published}
        if error is not None:  # a count still running is left to itself (read_outcome)
            if error.code in FALLBACK_CODES:  # the engine's failure, its message free of content
                log.warning(
                    "%s: the generation on %s failed (%s): %s",
                    state.request_id,
                    self._spec.name,
                    error.code.value,
                    error.message,
                )
            metrics.GENERATIONS.labels(error.code.value).inc()
            return state.failure(error, self._worker_id, time.time()).model_copy(update=streamed)
        # 3) An answer: count it.
        if counting is not None:
            with contextlib.suppress(LlmqError):  # a template refusing them: not counted
                state.uncompressed_prompt_tokens = await counting
        metrics.GENERATIONS.labels("ok").inc()
        metrics.TOKENS.labels("prompt").inc(state.prompt_tokens)
        metrics.TOKENS.labels("completion").inc(state.completion_tokens)
        if state.first_token_at is not None:
            metrics.TTFT.observe(state.first_token_at - state.started_at)
        answered = {**streamed, "model_digest": self._spec.digest}
        return state.completion(self._worker_id, time.time()).model_copy(update=answered)

    def _delta_stream(self, state: InFlight) -> DeltaStream | None:
        """Where a streamed request's pieces go (llmq.tokens); None for a whole answer."""
        work = state.work
        if not work.request.body.stream:
            return None
        claim = self._claim if work.speculative else None
        return DeltaStream(self._producer.send, work, state.request_id, self._deltas, claim)

    async def _unstartable(self, state: InFlight) -> LlmqError | None:
        """Why this work must not start, or None once it may."""
        uncarried = self._outcomes.uncarried(state)
        if uncarried is not None:
            return uncarried
        if state.work.model != self._spec.name:
            return LlmqError(
                ErrorCode.UNKNOWN_MODEL,
                f"routed to worker of {self._spec.name!r} but asks for {state.work.model!r}",
            )
        if state.work.request.body.chooses_calls and self._spec.tool_call_parser is None:
            return auto_refused(self._spec.name)
        request = state.work.request
        cancel = self._cancellations.stopping(state.work)
        if cancel is not None:
            return cancel_error(cancel, "before it started")
        if request.expired():
            return LlmqError(ErrorCode.EXPIRED, "the deadline passed while the request was queued")
        return None

    async def _run(self, state: InFlight, deltas: DeltaStream | None) -> LlmqError | None:
        """Stream the engine's steps into `state` (and into `deltas`, for stream=true);
        the failure, if it failed. Whichever comes first, the model's timeout, the request's
        deadline or its cancellation, aborts the generation: closing the engine's iterator
        (the cancellation) aborts it there."""
        request = state.work.request
        limit_s = self._spec.timeout_s
        left_s = None if request.deadline is None else request.deadline - time.time()
        by_deadline = left_s is not None and left_s < limit_s
        timer = asyncio.timeout(left_s if left_s is not None and by_deadline else limit_s)
        body = self._body(state.work)
        # A cancellation aborts the generation as its timeout would: the timer fires now.
        self._cancellations.running(state.work, state.request_id, lambda: _fire(timer))
        try:
            async with timer:
                async for step in self._engine.generate(
                    state.request_id, body, request.lane.priority, request.tenant, request.deadline
                ):
                    state.add(step)
                    if deltas is not None:
                        await deltas.add(step)
        except TimeoutError:
            if not timer.expired():
                raise
            return self._cut_short(state, by_deadline)
        except LlmqError as error:
            if error.code is ErrorCode.ENGINE_UNAVAILABLE:
                raise
            return error
        finally:
            self._cancellations.stopped(state.work, state.request_id)
        if deltas is not None:
            await deltas.finish(state.final_reason(), state.usage())
        return None

    def _cut_short(self, state: InFlight, by_deadline: bool) -> LlmqError:
        """Why a generation's timer fired: a cancellation, the deadline, or the timeout. One
        cut at the timeout before any step came is the server's failure, which the engine's
        breaker is told of (Judged): its call, cut, ends as one whose app left does."""
        cancel = self._cancellations.stopping(state.work)
        if cancel is not None:
            return cancel_error(cancel, f"after {state.completion_tokens} tokens")
        if by_deadline:
            return LlmqError(
                ErrorCode.EXPIRED,
                "the deadline passed during the generation, which was aborted after "
                f"{state.completion_tokens} tokens",
            )
        if not state.text and isinstance(self._engine, Judged):
            self._engine.timed_out(state.request_id)
        return LlmqError(
            ErrorCode.ENGINE_TIMEOUT,
            f"the generation ran past {self._spec.timeout_s:g}s ({self._spec.name}'s "
            "timeout_s) and was aborted",
        )

    @staticmethod
    def _body(work: WorkItem) -> ChatBody:
        """The body for the engine: an answer that may escalate (WorkItem.may_escalate; in a
        record without it, one of a cascading route with a model left) escalates on its mean
        logprob, so the engine is asked for them (CascadeBody)."""
        body = work.request.body
        escalates = work.may_escalate
        if escalates is None:
            escalates = work.route.cascade and bool(work.route.remaining)
        return CascadeBody.of(body) if escalates and not body.logprobs else body

    def _fail(self, error: BaseException) -> None:
        """An unexpected error stops the worker (the first one is raised by `run`)."""
        self._fatal = self._fatal or error

    async def _drain(self) -> None:
        """Let in-flight generations finish within the bound; abort the rest, commit, return."""
        if self._tasks:
            what = "in-flight requests"
            await self._abort(await self._settle(set(self._tasks), what), what)
        await self.commit()

    async def _settle(self, tasks: set[asyncio.Task[None]], what: str) -> set[asyncio.Task[None]]:
        """Wait up to the drain bound for `tasks`, and then for those already publishing
        their outcome; the rest, still generating (not one that ended meanwhile: it left
        `_concluding` as it ended, and parked it would hold its offset for good)."""
        log.info("finishing %d %s (up to %.0fs)", len(tasks), what, self._drain_timeout_s)
        _, pending = await asyncio.wait(tasks, timeout=self._drain_timeout_s)
        await asyncio.gather(*(pending & self._concluding), return_exceptions=True)
        return {task for task in pending if not task.done()} - self._concluding

    async def _abort(self, tasks: set[asyncio.Task[None]], what: str) -> None:
        """Abort unfinished generations: handed back, uncommitted, their starts given back."""
        for task in tasks:
            task.cancel()
        if tasks:
            log.warning("handed back %d unfinished %s (not committed)", len(tasks), what)
        await asyncio.gather(*tasks, return_exceptions=True)


def _fire(timer: asyncio.Timeout) -> None:
    """Make a running timeout fire at once (a generation that is already over is left)."""
    if not timer.expired():
        with suppress(RuntimeError):  # the timer already exited
            timer.reschedule(asyncio.get_running_loop().time())


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker.finish(set(revoked))
        self._worker.forget(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}/{tp.partition}" for tp in assigned))
        await self._worker.take_back(set(assigned))


def backoff_left(work: WorkItem) -> float:
    """How long a retry still waits for its backoff (WorkItem.not_before): on this machine's
    clock, but never longer than the backoff itself, measured on the clock that set it (the
    stream processor's, which also stamped `sent_at`), so that a clock ahead of this one
    does not add its lead to every retry."""
    if work.not_before is None:
        return 0.0
    left = work.not_before - time.time()
    if work.sent_at is not None:
        left = min(left, work.not_before - work.sent_at)
    return max(0.0, left)
