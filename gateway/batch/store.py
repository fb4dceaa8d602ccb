"""The Batch API's state in Redis, shared by every front door: files line by line, batches
with their counts, and each line's outcome, written once (schemas/names.py has the keys)."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from gateway import metrics
from schemas.errors import ErrorCode, LlmqError
from schemas.names import (
    BATCHES_ACTIVE,
    batch_keys,
    file_keys,
    tenant_active_key,
    tenant_index_gone_key,
    tenant_index_key,
)
from schemas.redact import explain
from schemas.request import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 200 * 1024 * 1024
MAX_FILE_LINES = 50_000
"""OpenAI's limits on a batch's input file; a request's line number counts blank lines."""
MAX_BLANK_LINES = 2 * MAX_FILE_LINES
"""Lines of a file in all, blank ones too: blank lines at its end pass, a flood does not."""
TOO_LARGE = f"the file is larger than {MAX_FILE_BYTES} bytes (OpenAI's limit)"
MAX_LINE_BYTES = 3 * MAX_RECORD_BYTES + (64 << 10)
"""The longest line an upload keeps: no longer one reads into a request within the record
limit a batch applies. A character the record holds in 2 bytes of UTF-8 (4) a line may write
as a 6-byte \\uXXXX escape (12), as Python's json.dumps does by default: three times; and 64
KiB for what the record does not carry (custom_id, method, url, keys, spaces, metadata)."""
GONE_S = 3600
"""An id a listing dropped from its tenant's index (found deleted or expired) still resumes
a listing paged after it for this long at least (see UNLIST)."""
PAGE = 64
"""Lines read or written per Redis call, at most (see PAGE_BYTES)."""
PAGE_BYTES = 4 << 20
"""A page of lines is about this much at most: an upload's is written once it takes this
much, and one read ends before it would take more, unless one line alone does. Valid lines
reach MAX_LINE_BYTES (a response's output line, echoing what its line asked, about as much):
64 of them held 88 MB per upload, download or batch being read, and neither uploads nor
downloads count in the front door's body bytes (spooled to disk as they come, streamed)."""
LENGTHS_READ = 1024
"""Lines whose lengths one Redis call reads before they are read a page at a time (see
`BatchStore._pages`)."""
MAX_RUNNING_BATCHES = 16
"""A tenant's batches not finished (validating, in progress, finalizing or cancelling) at
once; another is refused (429) until one ends, a cancelled one once its lines in flight are
answered (LLMQ_BATCH_CANCEL_GRACE_S at most). Each holds its lines' custom_ids (and a
response's echoes) in Redis while it runs: one file made into many batches would otherwise
copy itself into Redis once a batch."""
TOO_MANY = (
    f"you have {MAX_RUNNING_BATCHES} batches not finished (validating, in progress, finalizing"
    " or cancelling), the most llmq runs at once for one tenant: create this one once one of"
    " them ends (a cancelled one ends once its lines in flight are answered)"
)
ADMITTING_S = 60
"""How long a batch counts for its tenant (see ADMIT) without being among the runners'
batches: its creation puts it there just after it is admitted. Past that, one not there no
longer counts (its creation failed and its door died, it ended without its tenant's set told,
Redis lost its data)."""
LINE_PARTS = ("ids", "asked", "attempts", "retry")
"""The parts of a batch (schemas.names.batch_keys) that only its lines' sends and replies read,
dropped as it ends (`finish`), whatever its status: once it has ended no reply is written
(RECORD), and the collector skips one whose line has no custom_id. Kept, every ended batch
held its custom_ids and a response's echoes in Redis for its retention (30 days), and a file
made into many batches copied them into Redis once a batch."""
SWEEP = 16
"""Ids of its tenant's index that each write of a file or batch checks for objects gone (see
`_sweep`): more than the one it adds, so the index keeps up with what expires."""

# Give a part of a batch (KEYS[1], its fields) that a script writes the batch's expiry if it
# has none: it goes with the batch even if no runner ends it (see `finish`). It heads each
# script that calls like_batch.
LIKE_BATCH = """
local function like_batch(key)
  local at = redis.call('PEXPIRETIME', KEYS[1])
  if at > 0 then redis.call('PEXPIREAT', key, at, 'NX') end
end
"""

# A line's outcome, written once: into `output` or `errors`, unless it has one (0), the
# reply is to an attempt already sent again (0) or the batch has ended (0: a reply after its
# end, or to a line of an output file since deleted), or not this batch's line (-1). A retry
# (kind "retry") moves the line to its next attempt and into `retry` at ARGV[7].
RECORD = """
if redis.call('HGET', KEYS[1], 'tenant') ~= ARGV[3] then return -1 end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'completed' or status == 'failed' or status == 'expired' or status == 'cancelled'
then return 0 end
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1
then return 0 end
local attempt = tonumber(redis.call('HGET', KEYS[6], ARGV[1]) or '0')
if ARGV[2] ~= '*' and tonumber(ARGV[2]) ~= attempt then return 0 end
if ARGV[4] == 'retry' then
  redis.call('HSET', KEYS[6], ARGV[1], attempt + 1)
  redis.call('ZADD', KEYS[5], ARGV[7], ARGV[1])
  like_batch(KEYS[6])
  like_batch(KEYS[5])
  return 2
end
redis.call('ZREM', KEYS[5], ARGV[1])
local target, count = KEYS[2], 'completed'
if ARGV[4] == 'error' then target, count = KEYS[3], 'failed' end
redis.call('HSET', target, ARGV[1], ARGV[5])
like_batch(target)
redis.call('HINCRBY', KEYS[1], count, 1)
redis.call('HINCRBY', KEYS[1], count .. '_bytes', string.len(ARGV[5]) + 1)
local tokens = cjson.decode(ARGV[6])
redis.call('HINCRBY', KEYS[1], 'input_tokens', tokens[1])
redis.call('HINCRBY', KEYS[1], 'output_tokens', tokens[2])
redis.call('HINCRBY', KEYS[1], 'cached_tokens', tokens[3] or 0)
return 1
"""

# Set fields (ARGV: field, value, ...) of a batch's part KEYS[2] (its fields KEYS[1] or
# another) only while the batch is whole (its tenant): a batch that Redis lost (flushed,
# restarted without persistence, evicted) as a runner stepped it stays gone, and leaves no
# part without expiry behind.
WRITE = """
if redis.call('HEXISTS', KEYS[1], 'tenant') == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV))
like_batch(KEYS[2])
return 1
"""

# Move a batch from one of the statuses in ARGV[2..] to ARGV[1], stamping ARGV[1]_at.
MOVE = """
local status = redis.call('HGET', KEYS[1], 'status')
for i = 2, #ARGV - 1 do
  if status == ARGV[i] then
    redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[1] .. '_at', ARGV[#ARGV])
    return 1
  end
end
return 0
"""

# Take the lines just sent again (ARGV: line, attempt, line, attempt, ...) out of `retry`
# (KEYS[1]), each only if it is still at that attempt (KEYS[2]): a reply that came while they
# were being sent (rate_limited again) has put the line back at its next attempt, to stay.
RETRIED = """
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('HGET', KEYS[2], ARGV[i]) or '0') == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return 0
"""

# Keep a file (its fields KEYS[1], its lines KEYS[2]) until ARGV[1] (unix seconds) at least,
# its `expires_at` saying so; a file already gone (deleted, expired) stays gone.
KEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0') >= tonumber(ARGV[1]) then
  return 1
end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[1])
redis.call('EXPIREAT', KEYS[2], ARGV[1])
return 1
"""

# Admit batch ARGV[1] among its tenant's batches not finished (KEYS[1], by when each was
# admitted, ms) if fewer than ARGV[2] are (1, else 0), and keep them until ARGV[3] (unix
# seconds) at least. Those admitted ARGV[4] ms ago or more that are not among the runners'
# batches (KEYS[2]) are dropped first: they no longer run (see ADMITTING_S).
ADMIT = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[4]))) do
  if redis.call('SISMEMBER', KEYS[2], id) == 0 then redis.call('ZREM', KEYS[1], id) end
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ms, ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[3], 'NX')
redis.call('EXPIREAT', KEYS[1], ARGV[3], 'GT')
return 1
"""

LEASE = """
local owner = redis.call('GET', KEYS[1])
if owner == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if owner then return 0 end
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 or 0
"""

# Move the ids found gone (ARGV[2..]) from a tenant's index (KEYS[1]) into the side set of
# those dropped this period (KEYS[2], expiring at ARGV[1]), with their scores: an app that
# pages while it deletes asks `after` an id that another listing may have dropped.
UNLIST = """
local moved = 0
for i = 2, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score then
    redis.call('ZADD', KEYS[2], score, ARGV[i])
    redis.call('ZREM', KEYS[1], ARGV[i])
    moved = moved + 1
  end
end
if moved > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[1]) end
return moved
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# The length (0: none) of each field of a hash (KEYS[1]) named in ARGV[1] (joined by commas),
# joined the same way: a file's lines, read a page of PAGE_BYTES at a time by them
# (BatchStore._pages). One string each way: a reply of 1,024 numbers took longer to read than
# the lines it sized.
LENGTHS = """
local found = {}
for field in string.gmatch(ARGV[1], '[^,]+') do
  found[#found + 1] = redis.call('HSTRLEN', KEYS[1], field)
end
return table.concat(found, ',')
"""


@dataclass(frozen=True)
class Outcome:
    """What became of one line: kind "output", "error" or "retry" (with when)."""

    line: int
    attempt: int | None
    """The attempt it answers; None for one the batch gives (expired, cancelled)."""
    kind: str
    body: dict[str, Any]
    tokens: tuple[int, int, int] = (0, 0, 0)
    """Prompt, completion and cached prompt tokens."""
    retry_at: float = 0.0


def new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


class BatchStore:
    """Files and batches of every tenant; each object is only ever shown to its tenant."""

    def __init__(self, client: aioredis.Redis, retention_s: int) -> None:
        self._redis = client
        self._retention_s = retention_s
        self._record = client.register_script(LIKE_BATCH + RECORD)
        self._write_part = client.register_script(LIKE_BATCH + WRITE)
        self._move = client.register_script(MOVE)
        self._lease = client.register_script(LEASE)
        self._release = client.register_script(RELEASE)
        self._retried = client.register_script(RETRIED)
        self._keep = client.register_script(KEEP)
        self._unlist = client.register_script(UNLIST)
        self._admit = client.register_script(ADMIT)
        self._lengths = client.register_script(LENGTHS)
        self._swept: dict[str, float] = {}
        """Per tenant index, the score of the last id the last sweep checked (see `_sweep`);
        tenants are configured, so it stays small."""

    # Files.

    async def create_file(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
    ) -> dict[str, str]:
        """Store an upload line by line (blank lines are skipped, numbers kept); LlmqError
        past OpenAI's limits or for a line past MAX_LINE_BYTES, and nothing is kept. It is
        kept retention, or `expires_after_s` if shorter; a batch that reads it keeps it
        longer (see `create_batch`). An upload that fails (Redis refusing a write, a client
        gone) leaves no lines behind, unless its fields landed (a reply timed out): lines
        without them are no file's, unreachable until they expire."""
        file_id = new_id("file-")
        meta, lines = file_keys(file_id)
        try:
            size, count, kept = await self._write_lines(lines, chunks)
            if kept == 0:  # nothing was written
                raise LlmqError(ErrorCode.INVALID_REQUEST, "the file has no lines")
            now = int(time.time())
            asked_s = self._retention_s if expires_after_s is None else expires_after_s
            until = now + min(asked_s, self._retention_s)
            fields = {
                "id": file_id,
                "tenant": tenant,
                "filename": filename,
                "purpose": purpose,
                "bytes": str(size),
                "lines": str(count),
                "requests": str(kept),
                "created_at": str(now),
                "expires_at": str(until),
            }
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(meta, mapping=fields)
                pipe.expireat(meta, until)
                pipe.expireat(lines, until)
                self._index(pipe, tenant, "files", file_id, until)
                await pipe.execute()
        except BaseException:
            with contextlib.suppress(RedisError):  # else they expire after retention
                if not await self._written(meta, file_id):
                    await self._redis.unlink(lines)
            raise
        await self._sweep(tenant, "files")
        return fields

    async def _write_lines(self, key: str, chunks: AsyncIterator[bytes]) -> tuple[int, int, int]:
        """(bytes, lines, non-blank lines) written to the hash `key`. A line's pieces wait
        in a list until its end comes: joined once, a long line costs its length, not its
        length times its chunks; one past MAX_LINE_BYTES is refused there, not kept whole."""
        size = count = kept = waiting = 0
        unfinished: list[bytes] = []
        page: dict[str, bytes] = {}
        async for chunk in chunks:
            size += len(chunk)
            if size > MAX_FILE_BYTES:
                raise LlmqError(ErrorCode.INVALID_REQUEST, TOO_LARGE)
            first, *whole = chunk.split(b"\n")
            unfinished.append(first)
            waiting += len(first)
            if waiting > MAX_LINE_BYTES + 1:  # the one byte: a CR before its newline
                raise _too_long(count)
            if not whole:
                continue
            whole[0:0] = [b"".join(unfinished)]
            unfinished = [whole.pop()]
            waiting = len(unfinished[0])
            for line in whole:
                count, kept = await self._add_line(key, page, line, count, kept)
        rest = b"".join(unfinished)
        if rest.strip():
            count, kept = await self._add_line(key, page, rest, count, kept)
        if page:
            await self._flush(key, page)
        return size, count, kept

    async def _add_line(
        self, key: str, page: dict[str, bytes], line: bytes, count: int, kept: int
    ) -> tuple[int, int]:
        """Keep line `count` (unless blank). A request past line MAX_FILE_LINES is refused,
        blank lines counted in its number, and a file of more than MAX_BLANK_LINES lines in
        all: the walk of a batch over its numbers is bounded, and blank lines at a file's end
        pass."""
        line = line.rstrip(b"\r")
        if len(line) > MAX_LINE_BYTES:
            raise _too_long(count)
        if count >= MAX_BLANK_LINES:
            why = f"the file has more than {MAX_BLANK_LINES} lines, blank ones too"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why)
        if line.strip():
            if count >= MAX_FILE_LINES:
                why = (
                    f"line {count + 1} holds a request: past {MAX_FILE_LINES} lines, blank "
                    "ones counted (OpenAI's limit)"
                )
                raise LlmqError(ErrorCode.INVALID_REQUEST, why)
            kept += 1
            page[str(count)] = line
            if len(page) >= PAGE or sum(map(len, page.values())) >= PAGE_BYTES:
                await self._flush(key, page)
        return count + 1, kept

    async def _flush(self, key: str, page: dict[str, bytes]) -> None:
        """Write a page of lines; they expire even if the upload never ends (a crash)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=page)
            pipe.expire(key, self._retention_s)
            await pipe.execute()
        page.clear()

    async def file(self, file_id: str, tenant: str) -> dict[str, str] | None:
        """A file's fields, if it is the tenant's."""
        return self._theirs(await self._redis.hgetall(file_keys(file_id)[0]), tenant)  # type: ignore[misc]

    async def readers(self, file_id: str) -> list[tuple[str, str]]:
        """The active batches (id, status) whose input is this file."""
        ids = await self.active()
        async with self._redis.pipeline(transaction=False) as pipe:
            for batch_id in ids:
                pipe.hmget(batch_keys(batch_id)["batch"], ["input_file_id", "status"])
            found = await pipe.execute()
        return [
            (batch_id, status.decode())
            for batch_id, (input_file, status) in zip(ids, found, strict=True)
            if input_file == file_id.encode() and status is not None
        ]

    async def delete_file(self, meta: Mapping[str, str]) -> None:
        """Forget a file and its lines (an output or error file's: its batch's part). Its id
        stays in the tenant's index until a listing or a sweep passes it (see `unlist`): a
        listing paged after it goes on from there (an app deleting what each page lists).
        UNLINK: a file's lines (up to 200 MB) are freed apart, not while Redis waits."""
        lines = batch_keys(meta["batch"])[meta["part"]] if "batch" in meta else None
        await self._redis.unlink(*file_keys(meta["id"]))
        if lines is not None:  # another hash slot than the file's
            await self._redis.unlink(lines)

    async def pages(
        self, file_id: str, numbers: Iterable[int]
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Some lines of an upload, (number, line), blank ones skipped, a page at a time (see
        `_pages`)."""
        async for page in self._pages(file_keys(file_id)[1], numbers):
            yield page

    async def content(self, meta: Mapping[str, str]) -> AsyncIterator[bytes]:
        """A file's content: an upload as it came (less blank lines), or a batch's output or
        error lines by line number, up to its batch's `lines` (MAX_BLANK_LINES, any a file
        may have, where Redis lost the batch's fields)."""
        if "batch" in meta:
            batch = batch_keys(meta["batch"])
            count = await self._redis.hget(batch["batch"], "lines")  # type: ignore[misc]
            key, numbers = batch[meta["part"]], range(int(count or MAX_BLANK_LINES))
        else:
            key, numbers = file_keys(meta["id"])[1], range(int(meta["lines"]))
        async for page in self._pages(key, numbers):
            for _, line in page:
                yield line + b"\n"

    async def _pages(
        self, key: str, numbers: Iterable[int]
    ) -> AsyncIterator[list[tuple[int, bytes]]]:
        """The lines `numbers` of the hash `key` that are there, a page at a time: PAGE lines
        at most, and PAGE_BYTES unless one line alone takes more. Each line's length is read
        first (LENGTHS): a page of PAGE lines of a file's long lines held 90 MB, and neither a
        file's mean length nor its writer's pages bound a page by its line numbers (a run of
        long lines among short ones; blank lines, not kept)."""
        wanted = [str(n) for n in numbers]
        for start in range(0, len(wanted), LENGTHS_READ):
            fields = wanted[start : start + LENGTHS_READ]
            lengths: bytes = await self._lengths(keys=[key], args=[",".join(fields)])
            for paged in _paged(fields, [int(n) for n in lengths.split(b",")]):
                found: list[bytes | None] = await self._redis.hmget(key, paged)  # type: ignore[misc]
                page = [(int(f), x) for f, x in zip(paged, found, strict=True) if x is not None]
                if page:  # else deleted meanwhile
                    yield page

    # Batches.

    async def create_batch(self, fields: dict[str, str]) -> None:
        """Keep a new batch (status validating) for the runners to pick up; it and its input
        file are kept retention past its expires_at, the file even if its `expires_after`
        asked less (its expires_at says so): neither expires while the batch runs. LlmqError
        (rate_limited) if its tenant has MAX_RUNNING_BATCHES not finished: counted and admitted
        in one step (ADMIT), so that batches made at once, at any front door, count too."""
        batch_id, tenant = fields["id"], fields["tenant"]
        keys, admitted = batch_keys(batch_id), tenant_active_key(tenant)
        until = int(float(fields["expires_at"])) + self._retention_s
        args: list[str | int] = [batch_id, MAX_RUNNING_BATCHES, until, ADMITTING_S * 1000]
        if not await self._admit(keys=[admitted, BATCHES_ACTIVE], args=args):
            raise LlmqError(ErrorCode.RATE_LIMITED, TOO_MANY)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await self._keep(keys=file_keys(fields["input_file_id"]), args=[until], client=pipe)
                pipe.hset(keys["batch"], mapping=fields)
                pipe.expireat(keys["batch"], until)
                pipe.sadd(BATCHES_ACTIVE, batch_id)
                self._index(pipe, tenant, "batches", batch_id, until)
                _keep_index(pipe, tenant_index_key(tenant, "files"), until)
                await pipe.execute()
        except BaseException:  # its place back, unless the write landed (a reply timed out)
            with contextlib.suppress(RedisError):  # else it stops counting after ADMITTING_S
                if not await self._written(keys["batch"], batch_id):
                    await self._redis.zrem(admitted, batch_id)
            raise
        await self._sweep(tenant, "batches")

    async def _written(self, key: str, object_id: str) -> bool:
        """Whether a file's or batch's fields are in Redis (its creation's write landed)."""
        try:
            return bool(await self._redis.hget(key, "id") == object_id.encode())  # type: ignore[misc]
        except ResponseError:  # not a hash: a write that failed
            return False

    async def batch(self, batch_id: str, tenant: str | None = None) -> dict[str, str] | None:
        """A batch's fields (if it is the tenant's, when one is named)."""
        found = await self._redis.hgetall(batch_keys(batch_id)["batch"])  # type: ignore[misc]
        return self._theirs(found, tenant) if tenant else _decoded(found) or None

    async def listed(
        self, tenant: str, kind: str, after: str | None, limit: int, oldest_first: bool = False
    ) -> list[str] | None:
        """A tenant's file or batch ids, newest first (or oldest), those after `after`; None
        if `after` is none of them, nor one a listing dropped lately (see `unlist`)."""
        key = tenant_index_key(tenant, kind)
        start = "-inf" if oldest_first else "+inf"
        if after is not None:
            period = int(time.time()) // GONE_S
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zscore(key, after)
                for near in (period - 1, period, period + 1):  # front doors' clocks differ
                    pipe.zscore(tenant_index_gone_key(tenant, kind, near), after)
                scores = await pipe.execute()
            score = next((s for s in scores if s is not None), None)
            if score is None:
                return None
            start = f"({score}"
        if oldest_first:
            ids = await self._redis.zrangebyscore(key, start, "+inf", start=0, num=limit)
        else:
            ids = await self._redis.zrevrangebyscore(key, start, "-inf", start=0, num=limit)
        return [i.decode() for i in ids]

    async def objects(self, kind: str, ids: list[str], tenant: str) -> list[dict[str, str] | None]:
        """The fields of each of the tenant's files or batches (`kind`), in one round trip;
        None for one gone."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for object_id in ids:
                pipe.hgetall(_fields_key(kind, object_id))
            found = await pipe.execute()
        return [self._theirs(fields, tenant) for fields in found]

    async def unlist(self, tenant: str, kind: str, ids: list[str]) -> None:
        """Drop ids of files or batches found gone (expired, deleted) from the tenant's index,
        keeping their places GONE_S at least, for a listing paged after one (see UNLIST)."""
        if ids:
            period = int(time.time()) // GONE_S
            keys = [tenant_index_key(tenant, kind), tenant_index_gone_key(tenant, kind, period)]
            await self._unlist(keys=keys, args=[(period + 2) * GONE_S, *ids])

    async def move(self, batch_id: str, to: str, *sources: str) -> bool:
        """Set the status `to` (and `to`_at) if the batch is in one of `sources`."""
        now = str(int(time.time()))
        moved = await self._move(keys=[batch_keys(batch_id)["batch"]], args=[to, *sources, now])
        return bool(moved)

    async def update(self, batch_id: str, **fields: str | int) -> None:
        """Set some of a batch's fields, unless it is gone (see WRITE)."""
        key = batch_keys(batch_id)["batch"]
        await self._write_part(keys=[key, key], args=[v for f in fields.items() for v in f])

    async def active(self) -> list[str]:
        return sorted(m.decode() for m in await self._redis.smembers(BATCHES_ACTIVE))  # type: ignore[misc]

    async def forget(self, batch_id: str) -> None:
        """Drop what is left of a batch whose fields Redis lost (flushed, restarted without
        persistence, evicted): its parts, and its place among the runners' batches (its
        tenant, unknown now, drops it from its own at its next creation: see ADMIT)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.unlink(*batch_keys(batch_id).values())
            pipe.srem(BATCHES_ACTIVE, batch_id)
            await pipe.execute()

    async def finish(self, batch_id: str) -> None:
        """The batch is over: it leaves the runners' set and its tenant's (see ADMIT), its
        lease and its LINE_PARTS go (UNLINK: freed apart, as large as its file), and the rest
        of it (and its tenant's index) is kept retention past its expires_at, or past now if
        later; the lines of its output and error files no longer than those files
        (`add_file`)."""
        keys = batch_keys(batch_id)
        found = await self._redis.hmget(keys["batch"], ["tenant", "expires_at"])  # type: ignore[misc]
        tenant, expires_at = found
        until = self._kept_until(float(expires_at or 0))
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, key in keys.items():
                if name in ("lease", *LINE_PARTS):
                    pipe.unlink(key)
                else:
                    pipe.expireat(key, until, lt=name in ("output", "errors"))
            if tenant is not None:
                _keep_index(pipe, tenant_index_key(tenant.decode(), "batches"), until)
                pipe.zrem(tenant_active_key(tenant.decode()), batch_id)
            pipe.srem(BATCHES_ACTIVE, batch_id)
            await pipe.execute()

    async def lease(self, batch_id: str, owner: str, ttl_s: float) -> bool:
        """Drive the batch (or keep driving it) for `ttl_s`, unless another front door does."""
        key = batch_keys(batch_id)["lease"]
        return bool(await self._lease(keys=[key], args=[owner, int(ttl_s * 1000)]))

    async def release(self, batch_id: str, owner: str) -> None:
        await self._release(keys=[batch_keys(batch_id)["lease"]], args=[owner])

    # Lines.

    async def name_lines(
        self,
        batch_id: str,
        custom_ids: Mapping[int, str],
        asked: Mapping[int, dict[str, Any]] | None = None,
    ) -> None:
        """Record each line's custom_id (the lines the batch answers) and, for a response's
        line, what it `asked`, unless the batch is gone (see WRITE)."""
        keys = batch_keys(batch_id)
        named = {str(n): c for n, c in custom_ids.items()}
        echoed = {str(n): json.dumps(a) for n, a in (asked or {}).items()}
        async with self._redis.pipeline(transaction=False) as pipe:
            for part, values in (("ids", named), ("asked", echoed)):
                if values:
                    args = [v for pair in values.items() for v in pair]
                    await self._write_part(keys=[keys["batch"], keys[part]], args=args, client=pipe)
            await pipe.execute()

    async def asked(self, batch_id: str, numbers: list[int]) -> list[dict[str, Any] | None]:
        """What each of these lines asked, where it was recorded (a response's line)."""
        if not numbers:
            return []
        found = await self._redis.hmget(batch_keys(batch_id)["asked"], [str(n) for n in numbers])  # type: ignore[misc]
        return [None if f is None else json.loads(f) for f in found]

    async def custom_ids(self, batch_id: str, numbers: list[int]) -> list[str | None]:
        if not numbers:
            return []
        found = await self._redis.hmget(batch_keys(batch_id)["ids"], [str(n) for n in numbers])  # type: ignore[misc]
        return [None if f is None else f.decode() for f in found]

    async def attempts(self, batch_id: str, numbers: list[int]) -> list[int]:
        if not numbers:
            return []
        found = await self._redis.hmget(batch_keys(batch_id)["attempts"], [str(n) for n in numbers])  # type: ignore[misc]
        return [int(f or 0) for f in found]

    async def record(self, batch_id: str, tenant: str, outcomes: list[Outcome]) -> list[int]:
        """Write each outcome unless its line has one (see RECORD); what each did."""
        keys = batch_keys(batch_id)
        order = ["batch", "output", "errors", "ids", "retry", "attempts"]
        async with self._redis.pipeline(transaction=False) as pipe:
            for outcome in outcomes:
                await self._record(
                    keys=[keys[k] for k in order],
                    args=[
                        str(outcome.line),
                        "*" if outcome.attempt is None else str(outcome.attempt),
                        tenant,
                        outcome.kind,
                        json.dumps(outcome.body, separators=(",", ":")),
                        json.dumps(list(outcome.tokens)),
                        str(outcome.retry_at),
                    ],
                    client=pipe,
                )
            done: list[int] = await pipe.execute()
        for outcome, did in zip(outcomes, done, strict=True):
            if did > 0:
                metrics.BATCH_LINES.labels(outcome.kind).inc()
        return done

    async def due_retries(self, batch_id: str, now: float, limit: int) -> list[int]:
        found = await self._redis.zrangebyscore(
            batch_keys(batch_id)["retry"], "-inf", now, start=0, num=limit
        )
        return [int(n) for n in found]

    async def retried(self, batch_id: str, sent: list[tuple[int, int]]) -> None:
        """Take these lines (number, attempt sent) out of `retry` (see RETRIED)."""
        if sent:
            keys = batch_keys(batch_id)
            args = [str(v) for line in sent for v in line]
            await self._retried(keys=[keys["retry"], keys["attempts"]], args=args)

    async def next_retry(self, batch_id: str, after: float) -> float | None:
        """When the first line to send again after `after` (unix seconds) is due; None if
        none is."""
        found: list[tuple[bytes, float]] = await self._redis.zrangebyscore(
            batch_keys(batch_id)["retry"], f"({after}", "+inf", start=0, num=1, withscores=True
        )
        return found[0][1] if found else None

    async def waiting_retries(self, batch_id: str) -> int:
        count: int = await self._redis.zcard(batch_keys(batch_id)["retry"])
        return count

    async def unfinished(self, batch_id: str) -> AsyncIterator[list[tuple[int, str]]]:
        """The lines without an outcome yet, a page at a time: (number, custom_id)."""
        keys = batch_keys(batch_id)
        page: list[tuple[int, str]] = []
        async for number, custom_id in self._redis.hscan_iter(keys["ids"], count=PAGE * 4):
            page.append((int(number), custom_id.decode()))
            if len(page) >= PAGE * 4:
                yield await self._without_outcome(keys, page)
                page = []
        if page:
            yield await self._without_outcome(keys, page)

    async def _without_outcome(
        self, keys: dict[str, str], page: list[tuple[int, str]]
    ) -> list[tuple[int, str]]:
        fields = [str(n) for n, _ in page]
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(keys["output"], fields)
            pipe.hmget(keys["errors"], fields)
            output, errors = await pipe.execute()
        return [line for line, a, b in zip(page, output, errors, strict=True) if a is b is None]

    async def add_file(self, fields: dict[str, str], batch_expires_at: float) -> None:
        """Keep an output or error file's fields and its lines (its batch's part) as long as
        its batch is kept once it ends (`finish`), or, if the batch asked it (its
        `output_expires_after_s`), that long past the file's created_at if sooner."""
        meta, batch = file_keys(fields["id"])[0], batch_keys(fields["batch"])
        until = self._kept_until(batch_expires_at)
        asked = await self._redis.hget(batch["batch"], "output_expires_after_s")  # type: ignore[misc]
        if asked is not None:
            until = min(until, int(fields["created_at"]) + int(asked))
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={**fields, "expires_at": str(until)})
            pipe.expireat(meta, until)
            self._index(pipe, fields["tenant"], "files", fields["id"], until)
            await pipe.execute()
        await self._redis.expireat(batch[fields["part"]], until)  # another hash slot
        await self._sweep(fields["tenant"], "files")

    def _kept_until(self, batch_expires_at: float) -> int:
        """When an ended batch, and its output and error files, go: retention past its
        expires_at, or past now if later."""
        return int(max(time.time(), batch_expires_at)) + self._retention_s

    @staticmethod
    def _index(pipe: Any, tenant: str, kind: str, object_id: str, until: int) -> None:
        """List an object, kept until `until` (unix seconds), in its tenant's index."""
        key = tenant_index_key(tenant, kind)
        pipe.zadd(key, {object_id: time.time()})
        _keep_index(pipe, key, until)

    async def _sweep(self, tenant: str, kind: str) -> None:
        """Drop from the tenant's index the ids of objects gone (expired, deleted) among the
        next SWEEP, oldest first, on from where this front door's last sweep of it stopped:
        a listing, newest first, seldom reaches old ids, and objects kept long (a file that
        batches read) stop no sweep. An index that writes renew thus never grows for good.
        Housekeeping: Redis failing here fails not the write it follows (the next sweeps)."""
        try:
            await self._swept_once(tenant, kind)
        except RedisError as exc:
            log.warning("cannot sweep %s's %s index now: %s", tenant, kind, explain(exc))

    async def _swept_once(self, tenant: str, kind: str) -> None:
        key = tenant_index_key(tenant, kind)
        since = self._swept.pop(key, None)
        start = "-inf" if since is None else f"({since}"
        found: list[tuple[bytes, float]] = await self._redis.zrangebyscore(
            key, start, "+inf", start=0, num=SWEEP, withscores=True
        )
        if not found:
            return
        if len(found) == SWEEP:  # else the next sweep starts from the oldest again
            self._swept[key] = found[-1][1]
        ids = [object_id.decode() for object_id, _ in found]
        async with self._redis.pipeline(transaction=False) as pipe:
            for object_id in ids:
                pipe.exists(_fields_key(kind, object_id))
            exist = await pipe.execute()
        # Not atomic, as a listing's `unlist`: an object found gone stays gone.
        await self.unlist(tenant, kind, [i for i, e in zip(ids, exist, strict=True) if not e])

    @staticmethod
    def _theirs(found: Mapping[bytes, bytes], tenant: str | None) -> dict[str, str] | None:
        fields = _decoded(found)
        return fields if fields and fields.get("tenant") == tenant else None


def _paged(fields: list[str], lengths: list[int]) -> Iterator[list[str]]:
    """The fields of lines there (a length) in pages of PAGE at most, PAGE_BYTES unless one
    line alone takes more."""
    page: list[str] = []
    held = 0
    for field, length in zip(fields, lengths, strict=True):
        if not length:
            continue
        if page and (len(page) >= PAGE or held + length > PAGE_BYTES):
            yield page
            page, held = [], 0
        page.append(field)
        held += length
    if page:
        yield page


def _keep_index(pipe: Any, key: str, until: int) -> None:
    """Keep a tenant's index until `until` at least: as long as what it lists."""
    pipe.expireat(key, until, nx=True)  # a new index (GT takes one without expiry as endless)
    pipe.expireat(key, until, gt=True)


def _fields_key(kind: str, object_id: str) -> str:
    """The hash of a file's or batch's (`kind`) fields."""
    return file_keys(object_id)[0] if kind == "files" else batch_keys(object_id)["batch"]


def _too_long(number: int) -> LlmqError:
    why = f"line {number + 1} is longer than {MAX_LINE_BYTES} bytes: no request it holds fits"
    return LlmqError(ErrorCode.INVALID_REQUEST, f"{why} a record ({MAX_RECORD_BYTES} bytes)")


def _decoded(found: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in found.items()}
