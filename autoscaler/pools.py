"""What Kafka says of each model's worker pool: the work waiting in each lane in estimated
tokens (from the group's committed offsets, or the workers' read position written beside
them, to the end offsets, weighed by the records' token headers), the records the workers
run, the work done and arrived since the last look, and the workers in the group."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from autoscaler.ledger import Ledger
from llmq.fetcher import install as fix_fetcher
from llmq.groups import DEAD, EMPTY, describe_groups
from llmq.tail import assigned
from schemas.lanes import Lane
from schemas.names import HEADER_TOKENS, split_work_topic, work_topic, worker_group
from schemas.settings import ServiceSettings
from schemas.work import read_progress

log = logging.getLogger(__name__)

DEFAULT_RECORD_TOKENS = 256.0
"""A record whose header the autoscaler never read (written before it started) counts as
the mean of those it read, or this before any."""


@dataclass(frozen=True)
class PoolView:
    """One model's pool at one look."""

    backlog_tokens: dict[Lane, float]
    """Estimated tokens of each lane's waiting records (`backlog_records`)."""
    backlog_records: int
    """Records waiting: past each partition's committed offset and its workers' read
    position. Not those the workers run, nor those done behind one still running (the
    commit stops at the oldest unfinished record, for up to the model's timeout_s)."""
    served_tokens: float
    """Estimated tokens of the records committed since the previous look."""
    served_records: int
    """Records committed since the previous look."""
    arrived_tokens: float
    """Estimated tokens of every record published since the autoscaler started."""
    members: int
    partitions: int
    """Partitions of the model's largest lane topic."""
    state: str
    """Kafka's state of the workers' group (llmq.groups): Empty when its last worker left
    (offsets kept), Dead when there is no group (no workers, no offsets)."""
    in_flight: int = 0
    """Records the workers run (begun, not done), as their last commits say."""


class Pools:
    """Reads every lane topic of the given models (no group: it only watches) from the
    workers' committed offsets on, keeps a ledger of token estimates per partition, and
    answers `look(model)` from it and the group's offsets."""

    def __init__(self, settings: ServiceSettings, models: Sequence[str], client_id: str) -> None:
        self._settings = settings
        self._models = list(models)
        self._client_id = client_id
        self._ledgers: dict[TopicPartition, Ledger] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._had_offset: set[TopicPartition] = set()
        """Partitions the group had a committed offset for at the last look."""
        self._fresh_from: dict[TopicPartition, int] = {}
        """Each partition's end offset at the start: the records from there on arrived since."""
        self._arrived: dict[str, float] = defaultdict(float)
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        """Connect, and place the reader at each partition's committed offset (the start
        of the backlog), or its beginning when the group never committed."""
        kafka = self._settings.kafka_security().client_kwargs()
        topics = [work_topic(m, lane) for m in self._models for lane in Lane]
        self._admin = AIOKafkaAdminClient(
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=f"{self._client_id}-admin",
            **kafka,
        )
        fix_fetcher()
        self._consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=self._settings.kafka_bootstrap,
            client_id=self._client_id,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **kafka,
        )
        await self._admin.start()
        await self._consumer.start()
        partitions = await assigned(self._consumer, topics)
        self._fresh_from = await self._consumer.end_offsets(partitions)
        for model in self._models:
            committed = await self._offsets(model)
            for tp in partitions:
                if _model_of(tp) == model and tp in committed:
                    self._consumer.seek(tp, committed[tp].offset)
                    self._committed[tp] = committed[tp].offset
                    self._had_offset.add(tp)
        for tp in partitions:
            self._ledgers[tp] = Ledger(DEFAULT_RECORD_TOKENS)

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
        if self._admin is not None:
            await self._admin.close()

    async def follow(self) -> None:
        """Read the lane topics into the ledgers until cancelled."""
        consumer = self._started()[0]
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
            except KafkaError as exc:
                log.warning("reading the work topics failed, retrying: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for tp, records in batches.items():
                ledger = self._ledgers.setdefault(tp, Ledger(DEFAULT_RECORD_TOKENS))
                for record in records:
                    tokens = _tokens(record.headers, ledger.mean())
                    # The backlog read at the start is not arrivals (it would pass for a
                    # burst), nor is a record read again.
                    added = ledger.add(record.offset, tokens)
                    if added and record.offset >= self._fresh_from.get(tp, 0):
                        self._arrived[_model_of(tp)] += tokens

    async def look(self, model: str) -> PoolView:
        """The pool of `model` now. Raises KafkaError when Kafka cannot say, having changed
        nothing: the next look counts the work served since the last one that answered.

        A partition's records are done (below the committed offset, or the log's start
        where retention deleted records below a stale one), run (up to the read position
        the workers write beside their commits), or wait. A commit without that progress
        (a worker of an older release, a start committed where nothing was taken) and a
        group without members (nothing runs) leave everything past the commit waiting. A
        worker that died leaves its last progress until the partition's next owner commits
        (a commit interval after it took a record): its records running read as run."""
        consumer, admin = self._started()
        partitions = [tp for tp in self._ledgers if _model_of(tp) == model]
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        committed = await self._offsets(model)
        group = worker_group(model)
        found = (await describe_groups(admin, [group]))[group]
        # aiokafka's admin takes an answer with only the group's error (a coordinator still
        # loading after a failover, or moved) for no offsets: read as such, the whole log
        # would be backlog. Only an empty or dead group loses its offsets (they expired, or
        # were deleted).
        lost = [tp for tp in partitions if tp in self._had_offset and tp not in committed]
        if lost and found.state not in (EMPTY, DEAD):
            raise KafkaError(f"{group} ({found.state or 'no state'}) has no offset for {lost[0]}")
        tokens: dict[Lane, float] = defaultdict(float)
        records = 0
        running = 0
        served = 0.0
        served_records = 0
        for tp in partitions:
            ledger = self._ledgers[tp]
            commit = committed.get(tp)
            done = max(starts[tp] if commit is None else commit.offset, starts[tp])
            # Records deleted unserved (retention) are not served either.
            before = max(self._committed.get(tp, done), starts[tp])
            served += ledger.between(before, done)
            served_records += max(0, done - before)
            ledger.forget_before(done)
            self._committed[tp] = done
            if commit is not None:
                self._had_offset.add(tp)
            else:
                self._had_offset.discard(tp)
            progress = None  # a group without members runs nothing
            if commit is not None and found.state not in (EMPTY, DEAD):
                progress = read_progress(commit.metadata)
            read, runs = progress or (done, 0)
            read = min(max(read, done), ends[tp])
            running += min(runs, read - done)
            tokens[_lane_of(tp)] += ledger.between(read, ends[tp])
            records += max(0, ends[tp] - read)
        # A lane's partitions are consumed by at most as many workers, whatever the others.
        widest = max(Counter(_lane_of(tp) for tp in partitions).values(), default=0)
        return PoolView(
            dict(tokens),
            records,
            served,
            served_records,
            self._arrived[model],
            found.members,
            widest,
            found.state,
            running,
        )

    async def _offsets(self, model: str) -> dict[TopicPartition, OffsetAndMetadata]:
        _, admin = self._started()
        found = await admin.list_consumer_group_offsets(worker_group(model))
        return {tp: meta for tp, meta in found.items() if meta.offset >= 0}

    def _started(self) -> tuple[AIOKafkaConsumer, AIOKafkaAdminClient]:
        if self._consumer is None or self._admin is None:
            raise RuntimeError("Pools.start() first")
        return self._consumer, self._admin


def _model_of(tp: TopicPartition) -> str:
    return split_work_topic(tp.topic)[0]


def _lane_of(tp: TopicPartition) -> Lane:
    return split_work_topic(tp.topic)[1]


def _tokens(headers: Sequence[tuple[str, bytes | None]], default: float) -> float:
    """The record's token header, or `default` where it is missing or not a finite count
    (any producer can write headers; a null, "inf" or "nan" must not reach the policy)."""
    for key, value in headers or ():
        if key == HEADER_TOKENS:
            try:
                tokens = float((value or b"").decode())
            except ValueError:
                break
            return tokens if math.isfinite(tokens) and tokens >= 0 else default
    return default
