"""The app's client: publish requests as one tenant, collect its results by correlation_id."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    IllegalStateError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumberError,
)
from pydantic import ValidationError

from llmq.chat import MAX_WAITING, Key, Prompt, chat_request, request_key
from llmq.record_limits import (
    BATCH_BYTES,
    RECORD_LIMIT,
    REREAD_S,
    read_record_limit_blocking,
    record_size,
    refusal_after,
)
from llmq.settings import ClientSettings
from llmq.stored import stored_result, unreadable
from schemas.errors import LlmqError
from schemas.kafka_security import KafkaSecurity
from schemas.lanes import Lane
from schemas.names import REQUESTS, RESULTS, result_key
from schemas.redact import mask_url
from schemas.request import (
    DEFAULT_TENANT,
    IDENTIFIER,
    CacheMode,
    InferenceRequest,
    RecordRefusedError,
)
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings

log = logging.getLogger(__name__)

CLIENT_ID = "llmq-client"
STORE_POLL_S = 0.5
"""How often a waiting result() looks in the result store."""
LISTEN_RETRY_S = 1.0
"""How long the reply listener waits after a failed poll before polling again."""
CONNECT_TIMEOUT_S = 15.0
"""How long a Kafka client may take to reach the cluster (and be let in) before it fails;
kafka-python retries a refused connection until then (a broker starting refuses a while)."""
TOPIC_SPREAD_S = 10.0
"""How long a topic created a moment ago may take to reach the broker a client asks: each
broker of a cluster learns of it in its own time."""
DELIVERY_S = 30.0
"""The producer's delivery timeout: past it, kafka-python fails a record it has not had
acknowledged and drops it, queued or awaiting a retry, so a send reported failed is not
sent later (one already on the wire may still have been written)."""
EXPIRY_WAIT_S = 5.0
"""How much longer than DELIVERY_S a send waits for the producer to report the record
expired (its sender notices on its next turn); only a stuck sender runs past it."""

T = TypeVar("T", KafkaProducer, KafkaConsumer)


class Client:
    """Thread-safe; one tenant's client (a request may name another tenant). Replies to
    this client's requests are collected from the reply topic by a background listener
    started before the first submit, and only when they carry the request's tenant; any
    other result is read from the Redis result store by tenant and correlation_id, so a
    result can be fetched from any process by its tenant, and by no other tenant. The first
    result per id wins; memory holds only requests not yet collected, MAX_WAITING at most."""

    def __init__(
        self,
        settings: ServiceSettings | None = None,
        reply_to: str = RESULTS,
        listen: bool = True,
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        if not IDENTIFIER.fullmatch(tenant):
            raise ValueError(f"tenant {tenant!r} is not an identifier ({IDENTIFIER.pattern})")
        # The CLI's settings: a local stack moved with LLMQ_KAFKA_PORT / LLMQ_REDIS_PORT is
        # found without LLMQ_KAFKA_BOOTSTRAP / LLMQ_REDIS_URL.
        self.settings = settings or ClientSettings()
        self.reply_to = reply_to
        self.tenant = tenant
        self._redis = redis.Redis.from_url(self.settings.redis_url, socket_timeout=2)
        self._producer: KafkaProducer | None = None
        self._limit = RECORD_LIMIT
        """The most bytes Kafka takes as one record on llmq.requests, as last read."""
        self._read_at = 0.0
        self._producing = threading.Lock()
        self._closed = False
        self._pending: dict[Key, None] = {}
        """(tenant, correlation_id) of each request submitted and not yet collected, oldest
        first (a dict as an ordered set); with or without a listener, so result() knows the
        tenant a request was submitted as."""
        self._results: dict[Key, InferenceResult | LlmqError] = {}
        """The replies collected for pending requests; an LlmqError for a reply this llmq
        cannot read (a newer llmq's record), raised to its waiter."""
        self._arrived = threading.Condition()
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        if listen:
            consumer = self._reply_consumer()
            self._listener = threading.Thread(
                target=self._listen, args=(consumer,), name="llmq-replies", daemon=True
            )
            self._listener.start()

    def submit(
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
        """Publish one chat request; returns its correlation_id.

        `prompt` is a user message or a whole chat; `body` takes the OpenAI fields
        (max_tokens, temperature, top_p, stop, seed, ...). `tenant` defaults to the client's.
        """
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
        return self.submit_request(request)

    def submit_request(self, request: InferenceRequest) -> str:
        """Publish a prepared request; returns once the broker has acknowledged it. LlmqError
        (prompt_too_large) for one past 450 kB as a record, which admission would refuse, or
        past what Kafka takes on llmq.requests."""
        value = request.record()
        key = (request.tenant, request.correlation_id)
        with self._arrived:
            waiting = key in self._pending
            self._wait_for(key)
        try:
            self._send(REQUESTS, request.correlation_id.encode(), value)
        except BaseException:
            if not waiting:
                with self._arrived:
                    self._pending.pop(key, None)
            raise
        return request.correlation_id

    def result(
        self, correlation_id: str, timeout: float = 120.0, *, tenant: str | None = None
    ) -> InferenceResult:
        """Wait for the result of a request; raises TimeoutError when none came in time,
        RuntimeError when the client is closed meanwhile or the result store holds something
        else under its key, and LlmqError (internal_error) when its reply is no result this
        llmq reads (a newer llmq wrote it).

        The request is the one of `tenant`: by default the tenant this client submitted the
        id as (the client's own where it submitted the id as several, or not at all).
        """
        deadline = time.monotonic() + timeout
        with self._arrived:
            key = request_key(correlation_id, tenant, self._pending, self.tenant)
        while True:
            # 1) The listener's replies, waited for under the lock (woken on arrival).
            left = max(0.0, deadline - time.monotonic())
            with self._arrived:
                if self._listener is not None:
                    self._arrived.wait_for(
                        lambda: key in self._results or self._closing.is_set(),
                        timeout=min(left, STORE_POLL_S),
                    )
                found = self._results.pop(key, None)
                if isinstance(found, LlmqError):
                    self._pending.pop(key, None)
                    raise found
            # 2) The result store, outside the lock and once per poll interval.
            found = found or self._stored(*key)
            if found is not None:
                with self._arrived:  # its reply may have come meanwhile: nothing is kept
                    self._pending.pop(key, None)
                    self._results.pop(key, None)
                return found
            if self._closing.is_set():
                with self._arrived:
                    self._pending.pop(key, None)
                raise RuntimeError(f"the client was closed before the result of {correlation_id}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for {correlation_id} within {timeout:g}s")
            if self._listener is None:
                self._closing.wait(min(left, STORE_POLL_S))

    def ask(
        self, prompt: str | Sequence[dict[str, str]], timeout: float = 120.0, **kwargs: Any
    ) -> InferenceResult:
        """Submit and wait: the simplest way to get one answer. The request's deadline is a
        finite wait unless `deadline_s` is given: an answer nobody waits for is not
        generated (and billed) after it."""
        if 0 < timeout < math.inf:
            kwargs.setdefault("deadline_s", timeout)
        correlation_id = self.submit(prompt, **kwargs)
        return self.result(correlation_id, timeout=timeout, tenant=kwargs.get("tenant"))

    def ping_store(self) -> None:
        """Raise RuntimeError, saying where, if the result store cannot be reached."""
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            where = mask_url(self.settings.redis_url)
            raise RuntimeError(
                f"the result store (Redis at {where}) is unreachable: {exc}"
            ) from exc

    def close(self) -> None:
        """Flush what was submitted and stop the listener; a result() waiting raises."""
        with self._arrived:
            self._closing.set()
            self._arrived.notify_all()
        with self._producing:  # none is made behind this
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush()
            producer.close()
        if self._listener is not None:
            self._listener.join(timeout=5)
        self._redis.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, topic: str, key: bytes, value: bytes) -> None:
        """Send one record and wait for the broker's acknowledgement, or for the producer
        to give it up (DELIVERY_S): KafkaTimeoutError naming the request, which may have
        been written all the same, so that it is submitted again under its correlation_id.

        One past the limit last read is refused here, unsent (LlmqError, prompt_too_large),
        unless the limit, read again (at most every REREAD_S), takes it now. A broker's
        refusal (its limit lowered since) leaves the producer unable to send anything again:
        the limit is read again and the next send makes a fresh producer, and a record it
        failed (refused, or failed with it) is refused the same way if past that limit,
        else sent once more; refused by the broker again, it is too large.
        """
        size = record_size(key, value)
        for again in (False, True):
            producer = self._ready_producer()
            sent = self._handed(producer, topic, key, value, again)
            if sent is None:
                continue  # a fresh producer takes it
            try:
                sent.get(timeout=DELIVERY_S + EXPIRY_WAIT_S)
                return
            except KafkaTimeoutError as exc:
                raise KafkaTimeoutError(
                    f"request {key.decode()} was not acknowledged on {topic} ({exc}); it may "
                    f"have been written all the same: submit it again with correlation_id="
                    f"{key.decode()!r} (a copy under one id is harmless: the first result is kept)"
                ) from exc
            except (MessageSizeTooLargeError, OutOfOrderSequenceNumberError) as exc:
                self._reread(producer, broken=True)
                too_large = isinstance(exc, MessageSizeTooLargeError)
                refusal = refusal_after(topic, size, self._limit, again, too_large)
                if refusal is not None:
                    raise refusal from None
                if again:
                    raise

    def _handed(
        self, producer: KafkaProducer, topic: str, key: bytes, value: bytes, again: bool
    ) -> Any:
        """The record handed to `producer` (its future); None where a fresh producer should
        take it on the first try: the limit, read again, went up, or another thread's
        renewal closed this one."""
        try:
            return producer.send(topic, key=key, value=value)
        except MessageSizeTooLargeError:
            if not again and self._reread(producer, broken=False):
                return None
            raise RecordRefusedError(topic, record_size(key, value), self._limit) from None
        except IllegalStateError:
            if not again and self._producer is not producer:
                return None
            raise

    def _ready_producer(self) -> KafkaProducer:
        """The producer, made at first use under llmq.requests' limit (read then, and kept
        up to date by _reread)."""
        with self._producing:
            if self._closed:
                raise RuntimeError("the client is closed")
            if self._producer is None:
                if not self._read_at:
                    read = read_record_limit_blocking(self.settings, CLIENT_ID, REQUESTS)
                    self._limit, self._read_at = read or RECORD_LIMIT, time.monotonic()
                self._producer = connect(
                    KafkaProducer,
                    self.settings.kafka_bootstrap,
                    self.settings.kafka_security(),
                    acks="all",
                    # No linger: a request leaves at once; a burst from many threads still
                    # shares batches, what piles up while the sender thread is busy.
                    # tools.bench.hops
                    linger_ms=0,
                    # A record not acknowledged in DELIVERY_S is given up, not sent again,
                    # before submit() raises; kafka-python wants delivery >= linger + request.
                    delivery_timeout_ms=int(DELIVERY_S * 1000),
                    request_timeout_ms=int(DELIVERY_S * 1000) // 2,
                    max_request_size=self._limit,
                    batch_size=min(BATCH_BYTES, self._limit),  # the broker refuses one whole
                    client_id=CLIENT_ID,
                )
            return self._producer

    def _reread(self, used: KafkaProducer, broken: bool) -> bool:
        """Read llmq.requests' limit again (once, whoever asks first; where not `broken`, at
        most every REREAD_S), and drop the producer `used` where the broker broke it or the
        limit changed (the next send makes a fresh one); whether it was dropped. A limit the
        brokers will not say stays as last known."""
        with self._producing:
            current = self._producer is used
            if not current or not (broken or time.monotonic() - self._read_at >= REREAD_S):
                return not current
            if broken:
                log.warning("Kafka refused a record for its size; reading %s's limit", REQUESTS)
            read = read_record_limit_blocking(self.settings, CLIENT_ID, REQUESTS)
            self._read_at = time.monotonic()
            limit = self._limit if read is None else read
            drop = broken or limit != self._limit
            if drop:
                self._limit, self._producer = limit, None
        if drop:
            with contextlib.suppress(KafkaError):
                used.close(timeout=30)  # its records in flight, if it still works, go first
        return drop

    def _wait_for(self, key: Key) -> None:
        """Count a request as submitted (the caller holds _arrived); past MAX_WAITING the
        oldest goes, with any reply kept for it."""
        self._pending[key] = None
        while len(self._pending) > MAX_WAITING:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            self._results.pop(oldest, None)

    def _stored(self, tenant: str, correlation_id: str) -> InferenceResult | None:
        """The result store's copy; None when absent or Redis is unavailable. RuntimeError
        where what it holds is no result (written by something else): not the caller's
        input, and no wait makes it one."""
        try:
            raw = self._redis.get(result_key(tenant, correlation_id))
        except redis.RedisError:
            return None
        if not isinstance(raw, bytes):  # None: no such result
            return None
        return stored_result(raw, tenant, correlation_id, self.settings.redis_url)

    def _reply_consumer(self) -> KafkaConsumer:
        return tail(self.settings.kafka_bootstrap, self.reply_to, self.settings.kafka_security())

    def _listen(self, consumer: KafkaConsumer) -> None:
        """Collect the replies to requests pending, until close(); a failed poll is logged
        and tried again (the result store still answers meanwhile)."""
        try:
            while not self._closing.is_set():
                try:
                    batches = consumer.poll(timeout_ms=200)
                except Exception as exc:  # the listener must outlive it
                    log.warning("reading replies from %s failed, retrying: %r", self.reply_to, exc)
                    self._closing.wait(LISTEN_RETRY_S)
                    continue
                self._collect(batches)
        finally:
            consumer.close()

    def _collect(self, batches: dict[TopicPartition, list[Any]]) -> None:
        """Keep the replies among polled records that answer requests pending here (another
        tenant's reply to an equal id is not this request's), and wake the waiters."""
        arrived: list[tuple[Key, InferenceResult | LlmqError]] = []
        for records in batches.values():
            for record in records:
                try:
                    result = InferenceResult.model_validate_json(record.value)
                except ValidationError as exc:
                    named = unreadable(record.value or b"", exc)
                    if named is not None:  # else someone else's record on this topic
                        arrived.append(named)
                    continue
                arrived.append(((result.tenant or "", result.correlation_id or ""), result))
        if arrived:
            with self._arrived:
                for key, outcome in arrived:
                    if key in self._pending:
                        self._results.setdefault(key, outcome)
                self._arrived.notify_all()


def tail(bootstrap: str, topic: str, security: KafkaSecurity | None = None) -> KafkaConsumer:
    """A consumer of every partition of `topic`, positioned at its end as of this call. A
    topic not yet known to the broker asked is asked for again for up to TOPIC_SPREAD_S."""
    consumer = connect(
        KafkaConsumer,
        bootstrap,
        security or KafkaSecurity(),
        enable_auto_commit=False,
        client_id="llmq-tail",
    )
    deadline = time.monotonic() + TOPIC_SPREAD_S
    while not (partitions := consumer.partitions_for_topic(topic)):
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if not partitions:
        consumer.close()
        raise RuntimeError(
            f"topic {topic!r} does not exist at {bootstrap}; is the stack up (llmq local up)?"
        )
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve now, so nothing published after this call is skipped
    return consumer


def connect(kind: type[T], bootstrap: str, security: KafkaSecurity, **config: Any) -> T:
    """A kafka-python producer or consumer that logs in as `security` says. When it cannot
    reach the cluster (down, or the credentials refused: kafka-python tells the two apart
    only in its log), or is interrupted meanwhile (Ctrl-C), its half-built network client is
    closed (kafka-python leaves it running, to log its failure as the process exits) and a
    failure says where and as whom."""
    default = kind.DEFAULT_CONFIG["kafka_client"]
    built: list[Any] = []

    def tracked(**client_config: Any) -> Any:
        built.append(default(**client_config))
        return built[-1]

    try:
        return kind(
            bootstrap_servers=bootstrap,
            bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000),
            kafka_client=tracked,
            **security.client_kwargs(),
            **config,
        )
    except BaseException as exc:
        for client in built:
            client.close()
        if not isinstance(exc, KafkaError):
            raise
        raise RuntimeError(
            f"cannot connect to Kafka at {bootstrap} ({security.describe()}) within "
            f"{CONNECT_TIMEOUT_S:g} s: is the stack up (llmq local up), and are "
            "LLMQ_KAFKA_BOOTSTRAP, LLMQ_KAFKA_SECURITY_PROTOCOL and LLMQ_KAFKA_SASL_* right? "
            f"({type(exc).__name__}: {exc})"
        ) from exc
