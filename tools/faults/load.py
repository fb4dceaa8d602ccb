"""A fault scenario's load: requests published to llmq.requests (paced from a background
thread, or one by one), and every record on the scenario's own reply topic, timed."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from llmq.client import tail
from schemas.metering import MeteringEvent
from schemas.names import METERING, REQUESTS, TopicSpec
from schemas.request import CacheMode, ChatBody, ChatMessage, InferenceRequest
from schemas.result import InferenceResult
from tools.faults.tally import Reply, Request, Tally, count
from tools.topics import ensure_topics

TENANT = "faults"
DELIVERY_TIMEOUT_MS = 90_000
"""How long the producer retries a send (through a broker outage) before giving up on it:
a send never acknowledged is "not accepted", and llmq owes it nothing."""
LINGER_S = 5.0
"""After the last request is answered, how long to keep listening for duplicates."""
POLL_MS = 200
READ_BACK_S = 30.0
"""At most this long to read a scenario's records back from a topic at its end."""


class Load:
    """Requests of one scenario, each with a unique correlation id and the scenario's own
    reply topic (one partition), and the replies that came back. Thread-safe."""

    def __init__(self, bootstrap: str, scenario: str) -> None:
        self.tag = f"{scenario}-{uuid.uuid4().hex[:6]}"
        self.reply_to = f"faults.{self.tag}"
        ensure_topics(bootstrap, [TopicSpec(self.reply_to, 1)])
        self._consumer = tail(bootstrap, self.reply_to)
        self._bootstrap = bootstrap
        self._metering_from = ends(bootstrap, METERING)
        self._wall = time.time() - time.monotonic()
        """Converts a record's timestamp (wall clock) to the harness's monotonic clock."""
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
            client_id="llmq-faults",
        )
        self._changed = threading.Condition()
        self._sent: dict[str, tuple[float, bool | None]] = {}
        """correlation id -> (sent at, acknowledged: True, failed: False, pending: None)."""
        self._replies: list[Reply] = []
        self._seen: set[int] = set()
        """Offsets of the reply records read live."""
        self._answered: set[str] = set()
        self._next = 0
        self._closing = threading.Event()
        self._pacing: tuple[threading.Thread, threading.Event] | None = None
        self._reader = threading.Thread(target=self._read, name="faults-replies", daemon=True)
        self._reader.start()

    def request(
        self, prompt: str | None = None, max_tokens: int = 16, **envelope: Any
    ) -> InferenceRequest:
        """The next request: greedy, a short question unique to it unless `prompt` is given
        (copies of one prompt coalesce or hit the cache)."""
        with self._changed:
            n, self._next = self._next, self._next + 1
        cid = f"{self.tag}-{n}"
        text = prompt or f"What is {n % 97} plus {n // 97 + 3}? Answer with a number. ({cid})"
        body = ChatBody(
            messages=[ChatMessage(role="user", content=text)],
            max_tokens=max_tokens,
            temperature=0.0,
        )
        fields: dict[str, Any] = {"tenant": TENANT, "cache": CacheMode.AUTO, **envelope}
        return InferenceRequest(correlation_id=cid, reply_to=self.reply_to, body=body, **fields)

    def send(self, request: InferenceRequest) -> str:
        """Publish without waiting; the broker's acknowledgement is recorded when it comes."""
        self.send_raw(REQUESTS, request.record(), request.correlation_id)
        return request.correlation_id

    def send_raw(
        self, topic: str, value: bytes, correlation_id: str | None = None, key: bytes | None = None
    ) -> None:
        """Publish any bytes; with a correlation id, the record is owed a reply."""
        sent_at = time.monotonic()
        if correlation_id is not None:
            key = key or correlation_id.encode()
            with self._changed:
                self._sent[correlation_id] = (sent_at, None)
        try:
            future = self._producer.send(topic, key=key, value=value)
        except KafkaError:
            self._acked(correlation_id, sent_at, False)
            return
        future.add_callback(lambda _: self._acked(correlation_id, sent_at, True))
        future.add_errback(lambda _: self._acked(correlation_id, sent_at, False))

    def steady(self, rate: float, make: Callable[[], InferenceRequest] | None = None) -> None:
        """Send `rate` requests a second from a background thread until stop_steady()."""
        self.stop_steady()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._pace, args=(rate, make or self.request, stop), daemon=True
        )
        self._pacing = (thread, stop)
        thread.start()

    def stop_steady(self) -> None:
        """Stop the background sender, if one runs."""
        if self._pacing is not None:
            thread, stop = self._pacing
            stop.set()
            thread.join()
            self._pacing = None

    @property
    def sent(self) -> int:
        with self._changed:
            return len(self._sent)

    def answered(self) -> int:
        """Requests with a reply so far."""
        with self._changed:
            return len(self._answered)

    def first_reply(self, correlation_id: str) -> Reply | None:
        """The first reply to a request, if it came."""
        with self._changed:
            return next((r for r in self._replies if r.correlation_id == correlation_id), None)

    def replies(self) -> list[Reply]:
        """Every reply record so far, in arrival order."""
        with self._changed:
            return list(self._replies)

    def wait_for(self, done: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `done()` holds (checked on each reply), at most `timeout_s`."""
        with self._changed:
            return self._changed.wait_for(done, timeout=timeout_s)

    def wait_answered(self, ids: list[str], timeout_s: float) -> bool:
        """Wait until each of `ids` has a reply."""
        return self.wait_for(lambda: self._answered.issuperset(ids), timeout_s)

    def wait_progress(self, done: Callable[[], bool], idle_s: float) -> bool:
        """Wait until `done()` holds, as long as some request was answered in the last
        `idle_s`."""
        with self._changed:
            while not done():
                if not self._changed.wait_for(_more(done, self._answered), timeout=idle_s):
                    return False
            return True

    def _settled(self) -> bool:
        """Every accepted request answered (the caller holds the lock)."""
        return all(
            ok is False or (ok and cid in self._answered) for cid, (_, ok) in self._sent.items()
        )

    def finish(self, fault_at: float | None, drain_s: float, linger_s: float = LINGER_S) -> Tally:
        """Stop sending, wait for every accepted request to be answered until `drain_s`
        pass without a new answer, listen `linger_s` longer for duplicates, and count.

        The wait follows progress, not the clock: a slower engine answers the same work
        later, and only a pipeline that stopped answering loses what it holds.
        The reply topic and llmq.metering are read back from where they stood at the start,
        so a record the live consumer missed (it lives through broker restarts) still counts.
        """
        self.stop_steady()
        self.wait_progress(self._settled, drain_s)
        time.sleep(linger_s)
        with self._changed:
            requests = [Request(cid, at, ok is True) for cid, (at, ok) in self._sent.items()]
            replies, seen = list(self._replies), set(self._seen)
        start = {TopicPartition(self.reply_to, 0): 0}
        missed = [
            _reply(r.value, r.timestamp / 1000 - self._wall)
            for r in read_back(self._bootstrap, start)
            if r.offset not in seen
        ]
        prefix = f"{self.tag}-"
        generated = [
            cid
            for r in read_back(self._bootstrap, self._metering_from)
            if (cid := generation(r.value)) is not None and cid.startswith(prefix)
        ]
        return count(requests, sorted(replies + missed, key=lambda r: r.at), fault_at, generated)

    def close(self) -> None:
        self.stop_steady()
        self._closing.set()
        self._producer.close(timeout=5)
        self._reader.join(timeout=5)

    def __enter__(self) -> Load:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def _acked(self, correlation_id: str | None, sent_at: float, ok: bool) -> None:
        if correlation_id is None:
            return
        with self._changed:
            self._sent[correlation_id] = (sent_at, ok)
            self._changed.notify_all()

    def _pace(
        self, rate: float, make: Callable[[], InferenceRequest], stop: threading.Event
    ) -> None:
        start, n = time.monotonic(), 0
        while not stop.wait(max(0.0, start + n / rate - time.monotonic())):
            self.send(make())
            n += 1

    def _read(self) -> None:
        try:
            while not self._closing.is_set():
                batches = self._consumer.poll(timeout_ms=POLL_MS)
                now = time.monotonic()
                records = [record for rs in batches.values() for record in rs]
                arrived = [_reply(record.value, now) for record in records]
                if arrived:
                    with self._changed:
                        self._replies.extend(arrived)
                        self._seen.update(record.offset for record in records)
                        self._answered.update(r.correlation_id for r in arrived if r.correlation_id)
                        self._changed.notify_all()
        finally:
            self._consumer.close()


def _more(done: Callable[[], bool], answered: set[str]) -> Callable[[], bool]:
    """Holds once `done()` does or `answered` grew past its size now."""
    size = len(answered)
    return lambda: done() or len(answered) > size


def _reply(value: bytes, at: float) -> Reply:
    """A reply record as the tally sees it."""
    try:
        result = InferenceResult.model_validate_json(value)
    except ValidationError:
        return Reply(at, None, "unreadable")
    return Reply(
        at,
        result.correlation_id,
        result.status,
        error_code=result.error.code.value if result.error else None,
        text=result.text,
        cache=result.cache.value,
    )


def ends(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """Where each partition of `topic` ends now."""
    consumer = tail(bootstrap, topic)
    try:
        return {tp: consumer.position(tp) for tp in consumer.assignment()}
    finally:
        consumer.close()


def read_back(bootstrap: str, since: dict[TopicPartition, int]) -> list[Any]:
    """Every record from the given offsets to the partitions' current ends (kafka-python's
    ConsumerRecords), read by a fresh consumer within READ_BACK_S."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, client_id="llmq-faults"
    )
    found: list[Any] = []
    try:
        consumer.assign(list(since))
        for tp, offset in since.items():
            consumer.seek(tp, offset)
        ends = consumer.end_offsets(list(since))
        deadline = time.monotonic() + READ_BACK_S
        while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in since):
            for records in consumer.poll(timeout_ms=POLL_MS).values():
                found.extend(records)
    finally:
        consumer.close()
    return found


def generation(value: bytes) -> str | None:
    """The correlation id of an engine generation's metering event (None for other events)."""
    try:
        event = MeteringEvent.model_validate_json(value)
    except ValidationError:
        return None
    return event.correlation_id if event.generated else None
