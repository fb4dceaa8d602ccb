"""The token streams a client keeps: whole (parsed) for those read, awaited or submitted
here, as raw records within UNREAD_BYTES for the rest and for those ended and left unread
PARSED_AFTER_END_S, so that a reader that comes later (a coalesced copy moved to its leader's
stream, a stream resumed here or at another front door) reads from the start.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from pydantic import ValidationError

from llmq.chat import Key
from llmq.keyed import ByRequest
from schemas.stream import TokenDelta

UNREAD_BYTES = 64 * 2**20
"""The most bytes of records a client keeps of the streams nobody here reads or awaits: every
client reads every stream of the cluster, logprobs included, so without a bound each front
door would hold all of them. They are kept as they came: parsed, a record takes 6 to 16
times its size. 64 MiB holds some 2.5 million tokens without logprobs (about 26 B a token,
8 to a record), four times the streams in flight of a cluster writing 20,000 tokens/s of
30-second answers, or some 100,000 with top_logprobs=20 (about 680 B a token). Past it the
streams longest without a record go first (those that ended before those in flight); a
reader of one gets its answer from the final result, as one whose stream started before the
client did. A record of a stream not kept whole is not even parsed (its key names its
correlation_id): 64 MiB of them cost a client nothing but their bytes."""

PARSED_AFTER_END_S = 10.0
"""How long a stream kept whole stays parsed once it ended and nobody reads it: then it is
kept as raw records, as the unread ones (parsed, a record takes 6 to 16 times its bytes: a
front door's streams of the last two minutes would hold gigabytes)."""


class StreamLog:
    """Every token delta seen lately for one (tenant, correlation_id), in arrival order."""

    def __init__(self) -> None:
        self.deltas: list[TokenDelta] = []
        self.touched = time.monotonic()
        self.readers = 0
        """How many cursors read it now."""
        self._changed = asyncio.Event()

    def append(self, delta: TokenDelta) -> None:
        """Add a delta and wake whoever watches."""
        self.deltas.append(delta)
        self.touched = time.monotonic()
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def ended(self) -> bool:
        """Whether its last delta ends a generation."""
        return bool(self.deltas) and self.deltas[-1].finish_reason is not None

    def watch(self) -> asyncio.Event:
        """Set when the next delta comes (take it before looking at `deltas`)."""
        return self._changed


class StreamLogs:
    """The streams seen lately, by (tenant, correlation_id)."""

    def __init__(self, retention_s: float) -> None:
        self._retention_s = retention_s
        self._logs: ByRequest[StreamLog] = ByRequest()
        """The streams read, awaited or submitted here: kept whole."""
        self._unread: OrderedDict[str, _Unread] = OrderedDict()
        """The others' records by correlation id (their key), those longest without a record
        first (roughly: an ended stream's records join as their log goes), within
        UNREAD_BYTES."""
        self._unread_bytes = 0

    def kept_whole(self, correlation_id: str) -> bool:
        """Whether a stream of that id (of any tenant) is kept whole here."""
        return self._logs.names(correlation_id)

    def log(self, key: Key) -> StreamLog:
        """The stream's log, kept whole from now on, from the records kept while unread."""
        found = self._logs.get(key)
        if found is None:
            found = self._logs[key] = StreamLog()
            unread = self._unread.pop(key[1], None)
            if unread is not None:
                self._unread_bytes -= unread.size
                for record in unread.records:
                    delta = _parsed(record)
                    if delta is not None and (delta.tenant, delta.correlation_id) == key:
                        found.append(delta)
                    elif delta is not None:  # another tenant's of an equal id
                        self.keep(key[1], record, unread.touched)
        return found

    def add(self, delta: TokenDelta, value: bytes, wanted: bool) -> None:
        """A delta read (`value` as it came): kept whole where its stream is, or is `wanted`
        (awaited here), else kept unread."""
        key = (delta.tenant, delta.correlation_id)
        if wanted or key in self._logs:
            self.log(key).append(delta)
            if delta.follows is not None:  # its reader moves there: that one is kept whole too
                self.log((delta.tenant, delta.follows))
        else:
            self.keep(delta.correlation_id, value)

    def keep(self, correlation_id: str, value: bytes, touched: float | None = None) -> None:
        """Keep a record, as it came, of a stream nobody here reads or awaits; past
        UNREAD_BYTES the streams longest without a record go."""
        unread = self._unread.get(correlation_id)
        if unread is None:
            unread = self._unread[correlation_id] = _Unread()
        self._unread.move_to_end(correlation_id)
        unread.records.append(value)
        unread.size += len(value)
        unread.touched = time.monotonic() if touched is None else touched
        self._unread_bytes += len(value)
        while self._unread_bytes > UNREAD_BYTES:
            self._unread_bytes -= self._unread.popitem(last=False)[1].size

    def prune(self) -> None:
        """Forget the streams nothing has touched for the retention time, and none reads;
        keep those ended and unread PARSED_AFTER_END_S as raw records."""
        now = time.monotonic()
        horizon = now - self._retention_s
        for key, found in list(self._logs.items()):
            if found.readers or found.touched >= (
                now - PARSED_AFTER_END_S if found.ended else horizon
            ):
                continue
            del self._logs[key]
            if found.touched >= horizon:
                for delta in found.deltas:
                    self.keep(key[1], delta.model_dump_json().encode(), found.touched)
        while self._unread and next(iter(self._unread.values())).touched < horizon:
            self._unread_bytes -= self._unread.popitem(last=False)[1].size


class Cursor:
    """Where a reader is: which stream log, and how many of its deltas it has read. The log
    it reads counts it among its readers (a log read is not pruned) until it moves or
    closes."""

    def __init__(self, log: StreamLog) -> None:
        self.log = log
        self.seen = 0
        log.readers += 1

    def move(self, log: StreamLog) -> None:
        """Read `log` from its start instead."""
        self.close()
        self.log, self.seen = log, 0
        log.readers += 1

    def close(self) -> None:
        """Read nothing any more."""
        self.log.readers -= 1


def _parsed(record: bytes) -> TokenDelta | None:
    """The delta a record kept unread holds (None: not a delta, someone else's record)."""
    try:
        return TokenDelta.model_validate_json(record)
    except ValidationError:
        return None


class _Unread:
    """The records of a stream nobody here reads or awaits yet, as they came."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        self.size = 0
        self.touched = time.monotonic()
