"""The asyncio client: publish as one tenant, await results, stream answers as they come.

One reply consumer per client reads the reply topic and llmq.tokens and hands each record to
whoever waits for it, so thousands of waiting requests cost one consumer (the front door
runs one per process). Every streamed answer of the last `stream_retention_s` is kept
(llmq.stream_logs), so a copy coalesced with another request's generation, or a reader that
resumes, gets the answer from its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
)
from pydantic import ValidationError
from redis.exceptions import RedisError

from llmq.chat import MAX_WAITING, Key, Prompt, chat_request, request_key
from llmq.fetcher import install as fix_fetcher
from llmq.keyed import ByRequest
from llmq.record_limits import (
    BATCH_BYTES,
    READ_WAIT_S,
    RECORD_LIMIT,
    REREAD_S,
    read_record_limit,
    record_size,
    refusal_after,
)
from llmq.redis_client import bounded_client
from llmq.settings import ClientSettings
from llmq.stored import stored_result, unreadable
from llmq.stream_logs import Cursor, StreamLogs
from llmq.streaming import Delta, StreamReader
from llmq.tail import at_end
from schemas.errors import LlmqError
from schemas.lanes import Lane
from schemas.names import CANCELS, REQUESTS, RESULTS, TOKENS, result_key
from schemas.request import (
    DEFAULT_TENANT,
    IDENTIFIER,
    CacheMode,
    InferenceRequest,
    RecordRefusedError,
)
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from schemas.stream import Cancel, TokenDelta

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 5.0
CLOSE_FLUSH_S = 5.0
"""How long close() waits for Kafka to take the records not taken yet (milliseconds with
Kafka up). The producer is idempotent, and aiokafka never gives such a record up: with
Kafka away its stop would wait for the broker, and a stopping process with it."""


class AsyncClient:
    """One tenant's asyncio client (a request may name another tenant). Use it as an async
    context manager, or call start() and close()."""

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        *,
        tenant: str = DEFAULT_TENANT,
        reply_to: str = RESULTS,
        client_id: str = "llmq-aio",
        stream_retention_s: float = 120.0,
    ) -> None:
        if not IDENTIFIER.fullmatch(tenant):
            raise ValueError(f"tenant {tenant!r} is not an identifier ({IDENTIFIER.pattern})")
        # The CLI's settings: a local stack moved with LLMQ_KAFKA_PORT / LLMQ_REDIS_PORT is
        # found without LLMQ_KAFKA_BOOTSTRAP / LLMQ_REDIS_URL.
        self.settings = settings or ClientSettings()
        self.tenant = tenant
        self.reply_to = reply_to
        self._client_id = client_id
        self._pending: ByRequest[asyncio.Future[InferenceResult]] = ByRequest()
        self._streams = StreamLogs(stream_retention_s)
        self._followers: dict[Key, int] = {}
        """Requests not submitted here that follow() waits for: how many calls wait."""
        self._waiting: dict[Key, int] = {}
        """Requests a result() or follow() awaits now: how many calls (their waiter stays)."""
        self._producer: AIOKafkaProducer | None = None
        self._unacked: set[asyncio.Future[Any]] = set()
        """Records handed to a producer that Kafka has not acknowledged (nor refused) yet."""
        self._limit = RECORD_LIMIT
        """The most bytes Kafka takes as one record on llmq.requests, as last read."""
        self._read_at = 0.0
        self._renewing = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._redis: aioredis.Redis | None = None

    async def start(self) -> None:
        """Connect, and read the reply topic and llmq.tokens from their ends as of now."""
        kafka = self.settings.kafka_security().client_kwargs()
        bootstrap = self.settings.kafka_bootstrap
        self._limit = await read_record_limit(self.settings, self._client_id, REQUESTS) or (
            RECORD_LIMIT
        )
        self._read_at = time.monotonic()
        self._producer = self._new_producer(self._limit)
        fix_fetcher()
        self._consumer = AIOKafkaConsumer(
            self.reply_to,
            TOKENS,
            bootstrap_servers=bootstrap,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            **kafka,
        )
        try:
            await self._producer.start()
            await self._consumer.start()
            await at_end(self._consumer, [self.reply_to, TOKENS])
        except (KafkaError, OSError) as exc:
            await self.close()
            raise RuntimeError(
                f"cannot use Kafka at {bootstrap} ({self.settings.kafka_security().describe()}):"
                f" {exc!r}; is the stack up (llmq local up)?"
            ) from exc
        except BaseException:  # a topic missing: what started stops
            await self.close()
            raise
        self._redis = bounded_client(self.settings.redis_url, socket_timeout=2)
        self._reader = asyncio.create_task(self._read(self._consumer), name="llmq-aio-replies")

    async def close(self) -> None:
        """Stop reading; flush and close the connections (the records Kafka has not taken in
        CLOSE_FLUSH_S are left unsent, counted in a warning). Whoever still awaits a result
        gets RuntimeError."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._consumer is not None:
            await self._consumer.stop()
        async with self._renewing:  # none is started behind this
            producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer)
        if self._redis is not None:
            await self._redis.aclose()
        for (_, correlation_id), future in self._pending.items():
            if not future.done():
                future.set_exception(RuntimeError(f"the client closed before {correlation_id}"))
                future.exception()  # nobody may await it: not an error to log
        self._pending.clear()

    async def _stop(self, producer: AIOKafkaProducer) -> None:
        """Flush and stop `producer`, for CLOSE_FLUSH_S at most."""
        try:
            async with asyncio.timeout(CLOSE_FLUSH_S):
                await producer.stop()
        except TimeoutError:
            log.warning(
                "closing: %d record(s) left unsent: Kafka at %s did not take them in %g s",
                len(self._unacked),
                self.settings.kafka_bootstrap,
                CLOSE_FLUSH_S,
            )

    async def __aenter__(self) -> AsyncClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(
        self,
        prompt: Prompt,
        *,
        model: str | None = None,
        tenant: str | None = None,
        lane: Lane = Lane.STANDARD,
        cache: CacheMode = CacheMode.AUTO,
        correlation_id: str | None = None,
        deadline_s: float | None = None,
        **body: Any,
    ) -> str:
        """Publish one chat request (the OpenAI fields in `body`); its correlation_id."""
        request = chat_request(
            prompt,
            tenant=tenant or self.tenant,
            reply_to=self.reply_to,
            model=model,
            lane=lane,
            cache=cache,
            correlation_id=correlation_id,
            deadline_s=deadline_s,
            **body,
        )
        return await self.submit_request(request)

    async def submit_request(self, request: InferenceRequest) -> str:
        """Publish a prepared request once the broker has it; its result is awaited from now
        on, so it cannot slip by before anyone asks. LlmqError (prompt_too_large) for one past
        450 kB as a record, which admission would refuse, or past what Kafka takes on
        llmq.requests."""
        value = request.record()
        key = (request.tenant, request.correlation_id)
        waiting = key in self._pending
        self._wait_for(key)
        self._followers.pop(key, None)  # submitted here: kept until its result came
        try:
            await self._send(REQUESTS, request.correlation_id, value)
        except BaseException:
            if not waiting:
                self._pending.pop(key, None)
            raise
        return request.correlation_id

    async def publish(self, requests: Sequence[InferenceRequest]) -> dict[str, LlmqError]:
        """Publish prepared requests, all at once, until the broker has every one but those
        it refused for their size (returned: each one's LlmqError by correlation id); their
        results are not awaited here (their reply topic's reader collects them)."""
        records = [(r.record(), r.correlation_id) for r in requests]  # all, or none
        sent = await asyncio.gather(
            *(self._send(REQUESTS, key, value) for value, key in records), return_exceptions=True
        )
        refused = {}
        for (_, key), outcome in zip(records, sent, strict=True):
            if isinstance(outcome, LlmqError):
                refused[key] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
        return refused

    async def result(
        self, correlation_id: str, wait_s: float = 120.0, *, tenant: str | None = None
    ) -> InferenceResult:
        """The result of a request; TimeoutError when none came in `wait_s`, LlmqError
        (internal_error) when its reply is a record of a newer llmq's. One this client did
        not submit is looked up in the result store. `tenant` is by default the one this
        client submitted the id as (its own where it submitted the id as several)."""
        key = self._key(correlation_id, tenant)
        future = self._pending.get(key)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            if future is not None:
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), wait_s)
            found = await self._stored(key)
            if found is None and future is None:
                found = await self._poll_store(key, wait_s)
            if found is None:
                raise TimeoutError(f"no result for {correlation_id} within {wait_s:g}s")
            return found
        except asyncio.CancelledError:
            # Its caller is gone (a front door's client left): the waiter goes too, but for
            # a follow() of it here.
            alone = future is not None and key not in self._followers
            if alone and self._pending.get(key) is future:
                del self._pending[key]
            raise
        finally:
            self._unwait(key)
            # A waiter whose reply came goes; one timed out stays for its reply (a later
            # result(), or a follow() beside this one, reads it).
            if future is not None and future.done() and self._pending.get(key) is future:
                del self._pending[key]

    async def stream(
        self, prompt: Prompt, wait_s: float = 120.0, **kwargs: Any
    ) -> AsyncIterator[Delta]:
        """Submit with stream=true and yield the answer's pieces as they come."""
        correlation_id = await self.submit(prompt, stream=True, **kwargs)
        async for delta in self.follow(correlation_id, tenant=kwargs.get("tenant"), wait_s=wait_s):
            yield delta

    async def follow(
        self,
        correlation_id: str,
        *,
        tenant: str | None = None,
        offset: int = 0,
        wait_s: float = 120.0,
    ) -> AsyncIterator[Delta]:
        """The pieces of a request's answer from character `offset` on: its own token deltas,
        or those of the generation it was coalesced with, completed by its final result. An
        error result raises LlmqError; TimeoutError when nothing ends it in `wait_s` (from
        the call, not from the last piece)."""
        key = self._key(correlation_id, tenant)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            future = await self._awaited(key)
        except BaseException:
            self._unwait(key)
            raise
        reader = StreamReader(offset)
        cursor = Cursor(self._streams.log(key))
        deadline = time.monotonic() + wait_s
        try:
            while True:
                # 1) The pieces that came (a coalescing notice moves to the leader's).
                source = cursor.log
                changed = source.watch()
                for piece in self._pieces(cursor, reader, key[0]):
                    yield piece
                if reader.done:
                    return
                if cursor.log is not source:
                    continue
                # 2) The final result, or the result store past the deadline: the rest.
                last = await self._rest(key, future, reader, changed, deadline)
                if last is not None:
                    yield last
                    return
        finally:
            self._unwait(key)
            cursor.close()
            self._followed(key, future)

    def _pieces(self, cursor: Cursor, reader: StreamReader, tenant: str) -> Iterator[Delta]:
        """The pieces of the deltas not read yet."""
        while cursor.seen < len(cursor.log.deltas) and not reader.done:
            delta = cursor.log.deltas[cursor.seen]
            cursor.seen += 1
            if delta.follows is not None and reader.generation is None:
                cursor.move(self._streams.log((tenant, delta.follows)))
                return
            piece = reader.take(delta)
            if piece is not None:
                yield piece

    async def _rest(
        self,
        key: Key,
        future: asyncio.Future[InferenceResult],
        reader: StreamReader,
        changed: asyncio.Event,
        deadline: float,
    ) -> Delta | None:
        """Wait for more deltas (None) or the final result (the last piece); past the
        deadline, the result store has the last word."""
        if not future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                stored = await self._stored(key)
                if stored is None:
                    raise TimeoutError(f"no answer for {key[1]} in time")
                return reader.finish(stored)
            waiter = asyncio.ensure_future(changed.wait())
            waiting: set[asyncio.Future[Any]] = {waiter, future}
            try:
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:  # also when the reader is cancelled: asyncio.wait leaves what it waits on
                waiter.cancel()
            return None
        return reader.finish(future.result())

    async def cancel(self, correlation_id: str, *, tenant: str | None = None) -> None:
        """Tell the workers nobody waits for this request any more: a running generation is
        aborted, a queued one skipped. The request still ends in one reply (cancelled)."""
        cancel = Cancel(correlation_id=correlation_id, tenant=tenant or self.tenant)
        await self._send(CANCELS, correlation_id, cancel.model_dump_json().encode())

    def _new_producer(self, limit: int) -> AIOKafkaProducer:
        """A producer that refuses a record past `limit` itself, and builds no batch past it
        (the broker refuses a batch whole)."""
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            # No linger: a request leaves at once; a burst still shares batches (one request
            # in flight per broker, the rest batched meanwhile). tools.bench.hops
            linger_ms=0,
            max_request_size=limit,
            max_batch_size=min(BATCH_BYTES, limit),
            **self.settings.kafka_security().client_kwargs(),
        )

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        """Send one record and wait for the broker's acknowledgement.

        One past the limit last read is refused here, unsent (LlmqError, prompt_too_large),
        unless the limit, read again (at most every REREAD_S), takes it now. A broker's
        refusal (its limit lowered since) leaves the producer unable to write that partition
        again: the limit is read again and a fresh producer takes over, and a record it
        failed (refused, or out of sequence behind one) is refused the same way if past
        that limit, else sent once more; refused by the broker again, it is too large.
        """
        size = record_size(key.encode(), value)
        for again in (False, True):
            producer = self._producer
            if producer is None:
                raise RuntimeError("the client is not started, or closed")
            sent = await self._handed(producer, topic, key, value, again)
            if sent is None:
                continue  # a fresh producer takes it
            self._unacked.add(sent)
            sent.add_done_callback(self._unacked.discard)
            try:
                # Shielded: a caller that stops waiting leaves the record in the producer,
                # still to be sent, and counted until Kafka takes it.
                await asyncio.shield(sent)
                return
            except (MessageSizeTooLargeError, OutOfOrderSequenceNumber) as exc:
                await asyncio.shield(self._reread(producer, broken=True))
                too_large = isinstance(exc, MessageSizeTooLargeError)
                refusal = refusal_after(topic, size, self._limit, again, too_large)
                if refusal is not None:
                    raise refusal from None
                if again:
                    raise

    async def _handed(
        self, producer: AIOKafkaProducer, topic: str, key: str, value: bytes, again: bool
    ) -> Any:
        """The record handed to `producer` (its acknowledgement, a future); None where a fresh
        producer should take it on the first try: the limit, read again, went up, or another
        send's renewal stopped this one while the record waited for room in a batch."""
        try:
            return await producer.send(topic, value, key.encode())
        except MessageSizeTooLargeError:
            if not again and await asyncio.shield(self._reread(producer, broken=False)):
                return None
            raise RecordRefusedError(topic, record_size(key.encode(), value), self._limit) from None
        except ProducerClosed:
            if self._producer is None:
                raise RuntimeError("the client is closed") from None
            if not again and self._producer is not producer:
                return None
            raise

    async def _reread(self, used: AIOKafkaProducer, broken: bool) -> bool:
        """Read llmq.requests' limit again (once, whoever asks first; where not `broken`, at
        most every REREAD_S), and replace the producer `used` where the broker broke it or
        the limit changed; whether a fresh one took over. A limit the brokers will not say
        stays as last known."""
        async with self._renewing:
            current = self._producer is used
            if not current or not (broken or time.monotonic() - self._read_at >= REREAD_S):
                return not current
            if broken:
                log.warning("Kafka refused a record for its size; reading %s's limit", REQUESTS)
            read = await read_record_limit(self.settings, self._client_id, REQUESTS)
            self._read_at = time.monotonic()
            limit = self._limit if read is None else read
            if not broken and limit == self._limit:
                return False
            fresh = self._new_producer(limit)
            try:
                async with asyncio.timeout(READ_WAIT_S):
                    await fresh.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await fresh.stop()
                raise
            self._limit, self._producer = limit, fresh
        with contextlib.suppress(KafkaError):
            await used.stop()
        return True

    async def _awaited(self, key: Key) -> asyncio.Future[InferenceResult]:
        """The future of a request's result: the one of a request submitted here, else a new
        one, already holding the stored result of a request that ended (its reply went by
        before anyone here waited for it)."""
        future = self._pending.get(key)
        if future is None or key in self._followers:
            self._followers[key] = self._followers.get(key, 0) + 1
        if future is None:
            future = self._pending[key] = asyncio.get_running_loop().create_future()
            try:
                stored = await self._stored(key)
            except BaseException:  # cancelled, or a stored result that does not read
                self._followed(key, future)
                raise
            if stored is not None and not future.done():
                future.set_result(stored)
        return future

    def _followed(self, key: Key, future: asyncio.Future[InferenceResult]) -> None:
        """A follow() of the request ended. The result may still come (a stream ends at its
        last piece): result() finds it until then, and it goes once it came; but one that
        nobody here submitted goes when its last follower leaves (an id never answered would
        stay for good)."""
        followers = self._followers.pop(key, 0) - 1
        if followers > 0:
            self._followers[key] = followers
        elif self._pending.get(key) is not future:
            return  # another waiter's now
        elif future.done() or followers == 0:
            self._pending.pop(key, None)
        else:
            future.add_done_callback(lambda _: self._pending.pop(key, None))

    def _wait_for(self, key: Key) -> None:
        """A waiter for the reply to a request submitted here, kept until a result() or
        follow() took the reply; past MAX_WAITING the oldest nobody awaits now goes (a later
        result() reads only the result store). Those awaited stay: each is a call running."""
        self._pending.setdefault(key, asyncio.get_running_loop().create_future())
        excess = len(self._pending) - MAX_WAITING
        if excess > 0:
            idle = (k for k in self._pending if k not in self._waiting)
            for old in list(itertools.islice(idle, excess)):
                del self._pending[old]

    def _unwait(self, key: Key) -> None:
        """A result() or follow() of the request ended."""
        left = self._waiting.pop(key, 1) - 1
        if left > 0:
            self._waiting[key] = left

    def _key(self, correlation_id: str, tenant: str | None) -> Key:
        """The request of `tenant`, by default the tenant this client submitted the id as
        (its own where it submitted the id as several, or not at all)."""
        return request_key(correlation_id, tenant, self._pending, self.tenant)

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        """The one loop that reads replies and token deltas and hands them out."""
        pruned = time.monotonic()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except Exception as exc:  # the one reader of every reply must outlive it
                log.warning("reading replies failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                for record in records:
                    try:
                        if tp.topic == TOKENS:
                            self._on_delta(record.value, record.key)
                        else:
                            self._on_result(record.value)
                    except Exception:  # one record's, not the others' behind it
                        log.exception("a record of %s could not be handed out", tp.topic)
            if time.monotonic() - pruned > PRUNE_EVERY_S:
                self._streams.prune()
                pruned = time.monotonic()

    def _on_delta(self, value: bytes | None, key: bytes | None) -> None:
        """A token record: kept as it came unless its key (the correlation_id) names a stream
        awaited or kept whole here; only those are parsed (every client reads every stream
        of the cluster)."""
        if key is not None:
            correlation_id = key.decode(errors="replace")
            if not self._pending.names(correlation_id) and not self._streams.kept_whole(
                correlation_id
            ):
                self._streams.keep(correlation_id, value or b"")
                return
        try:
            delta = TokenDelta.model_validate_json(value or b"")
        except ValidationError:
            return  # not ours to judge: someone else's record on the topic
        wanted = (delta.tenant, delta.correlation_id) in self._pending
        self._streams.add(delta, value or b"", wanted=wanted)

    def _on_result(self, value: bytes | None) -> None:
        try:
            result = InferenceResult.model_validate_json(value or b"")
        except ValidationError as exc:
            # A reply to a request here that this llmq cannot read (a newer llmq's) ends
            # its wait; anything else is another app's record on the topic.
            named = unreadable(value or b"", exc)
            waiter = None if named is None else self._pending.get(named[0])
            if named is not None and waiter is not None and not waiter.done():
                waiter.set_exception(named[1])
                waiter.exception()  # raised to its awaiter; not an error to log unawaited
            return
        if result.correlation_id is None or result.tenant is None:
            return
        # Another tenant's reply to an equal id is not this request's.
        future = self._pending.get((result.tenant, result.correlation_id))
        if future is not None and not future.done():
            future.set_result(result)

    async def stored(
        self, correlation_id: str, *, tenant: str | None = None
    ) -> InferenceResult | None:
        """The result store's copy of a result; None when absent or Redis is unavailable."""
        return await self._stored((tenant or self.tenant, correlation_id))

    async def _stored(self, key: Key) -> InferenceResult | None:
        """The result store's copy; None when absent or Redis is unavailable. RuntimeError
        where what it holds is no result (written by something else)."""
        if self._redis is None:
            return None
        try:
            raw = await self._redis.get(result_key(*key))
        except RedisError:
            return None
        return None if raw is None else stored_result(raw, *key, self.settings.redis_url)

    async def _poll_store(self, key: Key, wait_s: float) -> InferenceResult | None:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            found = await self._stored(key)
            if found is not None:
                return found
            await asyncio.sleep(0.5)
        return None
