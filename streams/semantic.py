"""The semantic cache: a cached answer for a question asked again in other words.

A question is compared only within its scope (everything but the question that changes the
answer). Candidates come from embedding similarity; a guard that reads both questions then
rejects the close wordings whose answers differ (other entity, number, negation, direction),
which the embedding alone cannot tell apart (docs/semantic-cache.md has the measurements).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from schemas.fingerprint import fingerprint
from schemas.names import cache_key, semantic_stream_key
from schemas.request import ChatMessage, InferenceRequest
from streams import metrics
from streams.embed_queue import EmbedQueue, TextEmbedder
from streams.question import unreadable
from streams.semantic_guard import ADDITION_SIMILARITY, same_question
from streams.semantic_index import ScopeMirror
from streams.wordnet import wordnet

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.75
"""Cosine similarity from which a candidate goes to the guard: the highest threshold with
the most paraphrase hits on the tune half of tests/data/semantic_pairs.jsonl; the guard, not
the threshold, keeps near misses out (docs/semantic-cache.md)."""
LENIENT_FALSE_HIT_BOUND = 0.03
"""The upper end of the 95% interval of the lenient guard's false-hit rate over the labelled
near misses it was not tuned on (2.6%: docs/semantic-cache.md, `python -m
tools.bench.semantic_quality`, its "untuned" row)."""


def additions_from(max_false_hit_rate: float) -> float:
    """The guard's `additions_from` for the false-hit rate an operator accepts: the lenient
    guard when its measured bound is within it, else the strict one (no added words)."""
    return ADDITION_SIMILARITY if max_false_hit_rate >= LENIENT_FALSE_HIT_BOUND else math.inf


MAX_TEXT_CHARS = 2_000
"""Longer questions are not compared: the guard needs the whole text, kept in Redis."""
INLINE_SEARCH = 2_000
"""Scopes of up to this many entries are searched on the event loop (0.1 ms): handing so
little to a thread costs more on busy cores (docs/semantic-cache.md)."""
CANDIDATES = 8
"""The most similar entries above the threshold that the guard may check, best first."""
READ_BATCH = 1_000
"""Stream entries read per round trip when a mirror catches up."""
KEEP_S = 60.0
"""A mirror looked up this recently is not dropped to make room for another scope, and a
scope left without room is not tried again for this long: loading a large scope takes
seconds, so a process must not drop one only to load it again at the next lookup."""


def semantic_key(request: InferenceRequest, model: str) -> tuple[str, str] | None:
    """(scope, question) for the semantic cache, or None when the request has no place in it.

    The scope is the fingerprint of the request with the question blanked out: tenant,
    model, sampling parameters and every earlier message verbatim, so only questions asked
    in the same context are compared. None when the request may not be cached, or its last
    message is not a user's question short enough to compare whole, in words the guard can
    read (it passes others only as the very same text, which the exact cache answers:
    embedding them would be wasted). A raw prompt (/v1/completions) is text to continue, not
    a question: a prompt of like meaning is not one with the same continuation. Nor does a
    request with tools take another's answer: a call's arguments are the question's words.
    """
    *context, last = request.body.messages
    if (
        not request.cacheable
        or request.body.raw_prompt
        or request.body.tools is not None
        or last.role != "user"
        or not last.content.strip()
        or len(last.content) > MAX_TEXT_CHARS
        or unreadable(last.content)
    ):
        return None
    blanked = request.body.model_copy(
        update={"messages": [*context, ChatMessage(role="user", content="")]}
    )
    return fingerprint(request.model_copy(update={"body": blanked}), model), last.content


class QuestionEmbedder(TextEmbedder, Protocol):
    """Embeds questions, and says which it cuts short (streams.embedder.Embedder)."""

    def whole(self, text: str) -> bool: ...


@dataclass(frozen=True)
class SemanticHit:
    """A cached question close enough to the asked one: the fingerprint of its answer."""

    fingerprint: str
    similarity: float


@dataclass
class _Scope:
    """A mirror and how far it has read its scope's stream."""

    mirror: ScopeMirror
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    """Held while the mirror changes or is searched (in a thread, beyond INLINE_SEARCH)."""
    last_id: str = "0-0"
    synced_at: float = -math.inf
    used_at: float = field(default_factory=time.monotonic)
    """When it was last looked up: mirrors idle for KEEP_S make room for others."""


class SemanticCache:
    """Questions and their vectors in one Redis stream per scope, searched in process.

    Each stream entry adds (fingerprint, question, float32 vector) or, without a vector,
    forgets a fingerprint. A stream, not a hash, so that every process catches up by reading
    only what is new (a full read of 100k entries takes seconds), and so that Redis drops the
    oldest entries itself (MAXLEN, and at each write those older than `ttl_s`; a mirror
    answers from none older). Each process mirrors the scopes it is asked about and reads the
    new entries when its copy is older than `refresh_s`. `max_entries` bounds each scope,
    `max_mirrored` and `max_scopes` all mirrors of a process together: mirrors idle for
    KEEP_S make room, least recently used first, and a scope that finds none is not
    mirrored, its lookups missing, for KEEP_S. Redis errors make a lookup miss and an add or
    forget a no-op, and a lookup slower than `lookup_timeout_s` misses; they never raise. A
    lookup that gave up on the embedder makes the next ones miss at once, without it, until
    the embedder call it gave up on returns.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        embedder: QuestionEmbedder,
        threshold: float,
        max_entries: int = 100_000,
        refresh_s: float = 5.0,
        *,
        max_mirrored: int | None = None,
        lookup_timeout_s: float | None = None,
        ttl_s: int = 24 * 3600,
        max_scopes: int = 10_000,
        additions_from: float = math.inf,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`max_mirrored`: max_entries if None (one full scope). `lookup_timeout_s`: None,
        unbounded. `additions_from`: see semantic_guard.mismatch (never, by default: the
        strict guard). `clock`: seconds since the epoch, which entries' ages are read by."""
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        if max_entries < 1 or max_scopes < 1 or ttl_s < 1:
            raise ValueError("max_entries, max_scopes and ttl_s must be positive")
        if lookup_timeout_s is not None and lookup_timeout_s <= 0:
            raise ValueError(f"lookup_timeout_s must be positive, got {lookup_timeout_s}")
        max_mirrored = max_entries if max_mirrored is None else max_mirrored
        if max_mirrored < max_entries:
            raise ValueError(
                f"max_mirrored ({max_mirrored}) must hold a whole scope ({max_entries})"
            )
        self._redis = redis
        self._embedder = embedder
        self._vectors = EmbedQueue(embedder)
        self._threshold = threshold
        self._additions_from = additions_from
        wordnet()  # the guard's synonyms: loaded now (about 0.5 s), not on the first lookup
        self._max_entries = max_entries
        self._max_mirrored = max_mirrored
        self._lookup_timeout_s = lookup_timeout_s
        self._refresh_s = refresh_s
        self._ttl_s = ttl_s
        self._clock = clock
        self._max_scopes = max_scopes
        self._scopes: OrderedDict[str, _Scope] = OrderedDict()
        """Least recently looked up first."""
        self._mirrored = 0
        self._refused: OrderedDict[str, float] = OrderedDict()
        """Scopes left unmirrored, and until when (soonest first)."""
        self._skipping = False
        """Whether lookups miss without the embedder (said once, when they start)."""

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        """The most similar cached question at or above the threshold that the guard accepts;
        None also when that takes over `lookup_timeout_s` (a hung embedder, a large scope
        loading: what it read stays read, and the next lookup goes on from there); and None
        at once, without embedding, while the embedder has not returned the call a lookup
        gave up on (every lookup would wait for it)."""
        try:
            async with asyncio.timeout(self._lookup_timeout_s):
                return await self._lookup(scope, text)
        except TimeoutError:
            log.warning(
                "semantic lookup slower than %s s, treating as a miss", self._lookup_timeout_s
            )
            return None

    async def _lookup(self, scope: str, text: str) -> SemanticHit | None:
        entry = await self._synced(scope)
        if entry is None or not entry.mirror:
            return None
        if self._skipped():
            return None
        vector = await self._vectors.embed(text, urgent=True)
        async with entry.lock:
            self._expire(scope, entry)
            if len(entry.mirror) <= INLINE_SEARCH:
                found = entry.mirror.search(vector, self._threshold, CANDIDATES)
            else:
                found = await asyncio.to_thread(
                    entry.mirror.search, vector, self._threshold, CANDIDATES
                )
        if not found:
            return None
        # The guard reads whole texts (up to 2,000 characters, tens of ms): off the loop.
        return await asyncio.to_thread(self._guarded, text, found)

    def _skipped(self) -> bool:
        """Whether this lookup misses without the embedder (EmbedQueue.stuck), counted; said
        when lookups start to, and when they stop."""
        if not self._vectors.stuck:
            if self._skipping:
                self._skipping = False
                log.info("semantic cache: the embedder returned; lookups use it again")
            return False
        if not self._skipping:
            self._skipping = True
            log.warning(
                "semantic cache: the embedder has not returned a call that a lookup gave up on;"
                " lookups miss without it until it does"
            )
        metrics.SEMANTIC_SKIPPED.inc()
        return True

    def soon(self, scope: str, text: str) -> None:
        """Start embedding a question that lookup() will soon be asked about, if that
        lookup will need its vector (this process mirrors the scope and it has entries), so
        that the embedding overlaps the request's trip through Kafka."""
        entry = self._scopes.get(scope)
        if entry is not None and entry.mirror:
            self._vectors.soon(text)

    def _guarded(self, text: str, found: list[tuple[str, str, float]]) -> SemanticHit | None:
        """The first candidate, best first, that the guard accepts. The lenient guard lets
        added words pass on the pair's similarity, which says nothing of the words past
        the embedder's cut: for a question cut short, it passes none (0 for the guard)."""
        lenient = math.isfinite(self._additions_from)
        asked_whole = lenient and self._embedder.whole(text)
        for cached_fingerprint, cached_text, similarity in found:
            whole = asked_whole and self._embedder.whole(cached_text)
            judged = similarity if whole or not lenient else 0.0
            if same_question(text, cached_text, judged, self._additions_from):
                return SemanticHit(cached_fingerprint, similarity)
        return None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        """Remember that `fingerprint` answers `text` in this scope."""
        vector = await self._vectors.embed(text, urgent=False)
        fields: dict[FieldT, EncodableT] = {
            "fp": fingerprint,
            "t": text,
            "v": vector.astype("<f4").tobytes(),
        }
        written_ms = await self._append(scope, fields)
        if written_ms is not None:
            await self._change(
                scope, lambda mirror: mirror.put(fingerprint, text, vector, written_ms)
            )

    async def forget(self, scope: str, fingerprint: str) -> None:
        """Stop answering from `fingerprint` here and, once they catch up, in other processes,
        if its answer has left the exact cache: not when it could not be read (Redis away)."""
        try:
            if await self._redis.exists(cache_key(fingerprint)):
                return
        except RedisError as exc:
            log.warning("semantic cache unavailable, %s not forgotten: %s", fingerprint, exc)
            return
        await self._change(scope, lambda mirror: mirror.remove(fingerprint))
        await self._append(scope, {"fp": fingerprint})

    async def _append(self, scope: str, fields: dict[FieldT, EncodableT]) -> int | None:
        """Add a stream entry and return its time (ms), or None if Redis fails. The stream
        keeps the newest max_entries written within ttl_s, and expires ttl_s after its last
        write. (Expiring it with its oldest entry would drop the newer ones at every gap
        between writes.)"""
        key = semantic_stream_key(scope)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(key, fields, maxlen=self._max_entries, approximate=False)
                pipe.xtrim(key, minid=self._expired_before_ms(), approximate=False)
                pipe.expire(key, self._ttl_s)
                written, _, _ = await pipe.execute()
        except RedisError as exc:
            log.warning("semantic cache unavailable, entry not written: %s", exc)
            return None
        return _stream_ms(written)

    def _expired_before_ms(self) -> int:
        """Entries written before this time (ms) are older than ttl_s."""
        return int(self._clock() * 1000) - self._ttl_s * 1000

    def _expire(self, scope: str, entry: _Scope) -> None:
        """Drop the mirror's entries older than ttl_s (entry.lock held): they answer no more."""
        before = len(entry.mirror)
        entry.mirror.expire(self._expired_before_ms())
        self._count(scope, entry, before)

    async def _synced(self, scope: str) -> _Scope | None:
        """The scope's mirror, caught up if older than refresh_s; None if it has no room
        beside the mirrors in use, or Redis fails."""
        entry = self._scopes.get(scope) or await self._admitted(scope)
        if entry is None:
            return None
        entry.used_at = time.monotonic()
        self._scopes.move_to_end(scope)
        if time.monotonic() - entry.synced_at < self._refresh_s:
            return entry
        async with entry.lock:
            if time.monotonic() - entry.synced_at < self._refresh_s:
                return entry  # caught up by another lookup while this one waited
            before = len(entry.mirror)
            try:
                await self._catch_up(scope, entry)
            except RedisError as exc:
                log.warning("semantic cache unavailable, treating as a miss: %s", exc)
                return None
            finally:
                self._count(scope, entry, before)
        return entry

    async def _change(self, scope: str, change: Callable[[ScopeMirror], None]) -> None:
        """Apply a change to the scope's mirror, if this process mirrors that scope."""
        entry = self._scopes.get(scope)
        if entry is None:
            return
        async with entry.lock:
            self._expire(scope, entry)  # first: what expired makes room for the change
            before = len(entry.mirror)
            change(entry.mirror)
            self._count(scope, entry, before)

    async def _admitted(self, scope: str) -> _Scope | None:
        """A new mirror for the scope if its stream fits beside the others (see _room); else
        None, and the scope is left unmirrored for KEEP_S."""
        now = time.monotonic()
        if self._refused.get(scope, -math.inf) > now:
            return None
        try:
            size = await self._redis.xlen(semantic_stream_key(scope))
        except RedisError as exc:
            log.warning("semantic cache unavailable, treating as a miss: %s", exc)
            return None
        entry = self._scopes.get(scope)
        if entry is not None:  # admitted by another lookup meanwhile
            return entry
        if not self._room(1, size, keep=None):
            self._refuse(scope, size)
            return None
        self._refused.pop(scope, None)
        entry = self._scopes[scope] = _Scope(
            ScopeMirror(self._max_entries, self._embedder.dimensions)
        )
        return entry

    def _count(self, scope: str, entry: _Scope, before: int) -> None:
        """Track the entries mirrored in all; a scope dropped meanwhile no longer counts. A
        mirror that grew past max_mirrored, with no idle one to drop, is dropped itself."""
        if self._scopes.get(scope) is not entry:
            return
        self._mirrored += len(entry.mirror) - before
        if self._mirrored > self._max_mirrored and not self._room(0, 0, keep=scope):
            del self._scopes[scope]
            self._mirrored -= len(entry.mirror)
            self._refuse(scope, len(entry.mirror))

    def _room(self, scopes: int, entries: int, keep: str | None) -> bool:
        """Drop mirrors idle for KEEP_S, least recently used first, but not `keep`, until
        `scopes` and `entries` more fit within max_scopes and max_mirrored; False, dropping
        none, when the mirrors looked up lately leave too little room."""
        idle_since = time.monotonic() - KEEP_S
        over_scopes = len(self._scopes) + scopes - self._max_scopes
        over_entries = self._mirrored + entries - self._max_mirrored
        dropped = []
        for name, entry in self._scopes.items():
            if (over_scopes <= 0 and over_entries <= 0) or entry.used_at > idle_since:
                break  # enough room, or all the rest were looked up lately
            if name != keep:
                dropped.append(name)
                over_scopes -= 1
                over_entries -= len(entry.mirror)
        if over_scopes > 0 or over_entries > 0:
            return False
        for name in dropped:
            self._mirrored -= len(self._scopes.pop(name).mirror)
        return True

    def _refuse(self, scope: str, size: int) -> None:
        """Leave a scope unmirrored for KEEP_S (its lookups miss), and say so once."""
        now = time.monotonic()
        while self._refused and next(iter(self._refused.values())) <= now:
            self._refused.popitem(last=False)
        self._refused.pop(scope, None)
        self._refused[scope] = now + KEEP_S
        while len(self._refused) > self._max_scopes:
            self._refused.popitem(last=False)
        log.warning(
            "semantic cache: no room for scope %s (%d entries) beside %d scopes (%d entries)"
            " looked up within %.0f s; its lookups miss for that long",
            scope,
            size,
            len(self._scopes),
            self._mirrored,
            KEEP_S,
        )

    async def _catch_up(self, scope: str, entry: _Scope) -> None:
        """Apply the stream entries after the last one read, oldest first."""
        key = semantic_stream_key(scope)
        while True:
            batch = await self._redis.xrange(
                key, min="(" + entry.last_id, max="+", count=READ_BATCH
            )
            for entry_id, fields in batch:
                self._apply(entry.mirror, fields, _stream_ms(entry_id))
                entry.last_id = entry_id.decode()
            if len(batch) < READ_BATCH:
                break
        entry.synced_at = time.monotonic()

    @staticmethod
    def _apply(mirror: ScopeMirror, fields: dict[bytes, bytes], written_ms: int) -> None:
        fp, text, raw = fields.get(b"fp"), fields.get(b"t"), fields.get(b"v")
        if fp is None:
            log.warning("skipping a semantic cache entry without a fingerprint")
        elif raw is None:
            mirror.remove(fp.decode())
        elif text is None or len(raw) != 4 * mirror.dimensions:
            log.warning("skipping an unreadable semantic cache entry for %s", fp.decode())
        else:
            vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            mirror.put(fp.decode(), text.decode(errors="replace"), vector, written_ms)


def _stream_ms(entry_id: bytes) -> int:
    """The time (ms) in a stream entry's id, `<ms>-<sequence>`."""
    return int(entry_id.split(b"-")[0])
