"""The semantic cache when things go wrong: scopes beyond the memory bound, an embedder
that fails or hangs, an answer that could not be read. Redis is a small in-memory stand-in
for the stream commands the cache uses (the real one: tests/integration/)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.catalog import Catalog
from schemas.names import cache_key, semantic_stream_key
from streams import semantic
from streams.semantic import SemanticCache, SemanticHit, semantic_key
from streams.semantic_index import Vector
from streams.settings import StreamSettings
from tests.unit.stages import FakeStore, Pipeline, admitted, answer, raw_request, result_of

DIMENSIONS = 8
QUESTION = "How do I boil an egg?"


class Embedder:
    """Unit vectors from each text's hash: the same text, the same vector; `hang` blocks
    every call until `release` is set (a model that never returns)."""

    dimensions = DIMENSIONS

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.release = threading.Event()

    def embed(self, texts: list[str]) -> Vector:
        if self.hang:
            self.release.wait()
        return np.stack([_vector(text) for text in texts])

    def whole(self, text: str) -> bool:
        return True


def _vector(text: str) -> Vector:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    vector = np.random.default_rng(seed).standard_normal(DIMENSIONS).astype(np.float32)
    return vector / np.linalg.norm(vector)


class StreamRedis:
    """XADD (exact MAXLEN), XTRIM (exact MINID), EXPIRE (a no-op), XRANGE, XLEN and EXISTS on
    dicts; entry ids take their time from `clock`; counts the stream entries XRANGE returns;
    `fails` makes EXISTS raise as a lost connection does."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.streams: dict[str, list[tuple[bytes, dict[bytes, bytes]]]] = {}
        self.strings: set[str] = set()
        self.read = 0
        self.fails = False
        self._clock = clock
        self._last_ms = 0
        self._next_id = 0

    def xadd(self, key: str, fields: dict[str, Any], maxlen: int, approximate: bool) -> bytes:
        self._next_id += 1
        self._last_ms = max(self._last_ms, int(self._clock() * 1000))
        encoded = {
            k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()
        }
        stream = self.streams.setdefault(key, [])
        entry_id = f"{self._last_ms}-{self._next_id}".encode()
        stream.append((entry_id, encoded))
        del stream[: max(0, len(stream) - maxlen)]
        return entry_id

    def xtrim(self, key: str, minid: int, approximate: bool) -> int:
        stream = self.streams.get(key, [])
        old = [e for e in stream if _id(e[0].decode()) < (minid, 0)]
        del stream[: len(old)]
        return len(old)

    def expire(self, key: str, seconds: int) -> bool:
        return key in self.streams

    def pipeline(self, transaction: bool) -> _Pipeline:
        return _Pipeline(self)

    async def xrange(
        self, key: str, min: str, max: str, count: int
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        after = _id(min.removeprefix("("))
        batch = [e for e in self.streams.get(key, []) if _id(e[0].decode()) > after][:count]
        self.read += len(batch)
        return batch

    async def xlen(self, key: str) -> int:
        return len(self.streams.get(key, []))

    async def exists(self, key: str) -> int:
        if self.fails:
            raise RedisConnectionError("redis gone")
        return int(key in self.strings)


def _id(entry_id: str) -> tuple[int, int]:
    ms, seq = entry_id.split("-")
    return int(ms), int(seq)


class _Pipeline:
    """Runs each command at once; execute() returns their results."""

    def __init__(self, redis: StreamRedis) -> None:
        self._redis = redis
        self._results: list[Any] = []

    async def __aenter__(self) -> _Pipeline:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def xadd(self, key: str, fields: dict[str, Any], maxlen: int, approximate: bool) -> None:
        self._results.append(self._redis.xadd(key, fields, maxlen, approximate))

    def xtrim(self, key: str, minid: int, approximate: bool) -> None:
        self._results.append(self._redis.xtrim(key, minid, approximate))

    def expire(self, key: str, seconds: int) -> None:
        self._results.append(self._redis.expire(key, seconds))

    async def execute(self) -> list[Any]:
        return self._results


def _fill(redis: StreamRedis, scope: str, texts: list[str]) -> None:
    for n, text in enumerate(texts):
        fields = {"fp": f"{scope}-fp{n}", "t": text, "v": _vector(text).astype("<f4").tobytes()}
        redis.xadd(semantic_stream_key(scope), fields, maxlen=10**9, approximate=False)


def _cache(redis: StreamRedis, embedder: Embedder | None = None, **options: Any) -> SemanticCache:
    client = cast("aioredis.Redis", redis)
    return SemanticCache(client, embedder or Embedder(), 0.75, **options)


async def _looked_up(
    cache: SemanticCache, redis: StreamRedis, scopes: str
) -> list[tuple[str, int, bool]]:
    """Each scope's question looked up in turn: (scope, entries read, hit)."""
    seen = []
    for scope in scopes:
        redis.read = 0
        hit = await cache.lookup(scope, f"{QUESTION} {scope}")
        seen.append((scope, redis.read, hit is not None))
    return seen


def _alternate(cache: SemanticCache, redis: StreamRedis) -> list[tuple[str, int, bool]]:
    """Look up scopes A and B in turn, three times each."""
    return asyncio.run(_looked_up(cache, redis, "ABABAB"))


def _two_scopes(redis: StreamRedis, full: int) -> None:
    _fill(redis, "A", [f"{QUESTION} A", *(f"entry {n}" for n in range(full - 1))])
    _fill(redis, "B", [f"{QUESTION} B"])


def test_the_bound_per_scope_does_not_bound_the_mirrors_of_a_process() -> None:
    redis = StreamRedis()
    _two_scopes(redis, full=50)
    seen = _alternate(_cache(redis, max_entries=50, max_mirrored=100), redis)
    assert seen[:2] == [("A", 50, True), ("B", 1, True)]
    assert seen[2:] == [(s, 0, True) for s in "ABAB"], "both stay mirrored, read once"


def test_a_scope_without_room_is_not_mirrored_rather_than_reloading_another() -> None:
    redis = StreamRedis()
    _two_scopes(redis, full=50)
    seen = _alternate(_cache(redis, max_entries=50), redis)  # max_mirrored: the same
    assert seen == [("A", 50, True), *[(s, 0, s == "A") for s in "BABAB"]]


def test_a_mirror_idle_for_keep_s_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(semantic, "KEEP_S", 0.0)
    redis = StreamRedis()
    _two_scopes(redis, full=50)
    cache = _cache(redis, max_entries=50, max_mirrored=50)

    async def run() -> list[bool]:
        return [await cache.lookup(s, f"{QUESTION} {s}") is not None for s in "AB"]

    assert asyncio.run(run()) == [True, True], "B took A's room"


def test_a_mirror_that_outgrows_the_room_leaves_the_others_in_place() -> None:
    redis = StreamRedis()
    _two_scopes(redis, full=49)
    cache = _cache(redis, max_entries=50, max_mirrored=50)

    async def run() -> list[tuple[str, int, bool]]:
        for scope in "AB":
            await cache.lookup(scope, QUESTION)
        await cache.add("B", "How do I fry an egg?", "B-fp9")  # 51 mirrored: B goes
        return await _looked_up(cache, redis, "AB")

    assert asyncio.run(run()) == [("A", 0, True), ("B", 0, False)]


def test_the_memory_bound_must_hold_a_whole_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="max_mirrored"):
        _cache(StreamRedis(), max_entries=50, max_mirrored=49)
    for name in ("LLMQ_SEMANTIC_MAX_ENTRIES", "LLMQ_SEMANTIC_MAX_MIRRORED"):
        monkeypatch.delenv(name, raising=False)
    assert StreamSettings().semantic_max_mirrored == 200_000, "two full scopes by default"
    monkeypatch.setenv("LLMQ_SEMANTIC_MAX_ENTRIES", "300000")
    with pytest.raises(ValidationError, match="LLMQ_SEMANTIC_MAX_MIRRORED"):
        StreamSettings()
    monkeypatch.setenv("LLMQ_SEMANTIC_MAX_MIRRORED", "300000")
    assert StreamSettings().semantic_max_mirrored == 300_000


def _batch(question: str) -> bytes:
    raw = json.loads(raw_request(cid="b-1", temperature=0))
    raw["lane"] = "batch"
    raw["body"]["messages"] = [{"role": "user", "content": question}]
    return json.dumps(raw).encode()


def _key(question: str) -> tuple[str, str]:
    """The semantic cache's scope and text for a batch request asking `question`."""
    work = admitted(_batch(question))
    key = semantic_key(work.request, Catalog.builtin().cache_scope(work.route))
    assert key is not None
    return key


def test_a_lookup_that_never_ends_is_a_miss_and_the_request_is_routed() -> None:
    redis, embedder = StreamRedis(), Embedder(hang=True)
    key = _key(QUESTION)
    _fill(redis, key[0], [QUESTION])
    harness = Pipeline(similar=_cache(redis, embedder, lookup_timeout_s=0.05))

    async def run() -> None:
        try:
            await harness._on_request(None, _batch("How can I boil an egg?"))
        finally:
            embedder.release.set()

    asyncio.run(run())
    assert [s.topic for s in harness.send.sent] == ["llmq.work.smollm2-135m.batch"]


class FailingSimilar:
    """A semantic cache whose embedder fails at every lookup."""

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        raise RuntimeError("torch: out of memory")

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        return None

    async def forget(self, scope: str, fingerprint: str) -> None:
        return None


def test_a_failed_lookup_on_the_batch_lane_is_a_miss(caplog: pytest.LogCaptureFixture) -> None:
    harness = Pipeline(similar=FailingSimilar())
    harness.on_request(None, _batch(QUESTION))
    assert [s.topic for s in harness.send.sent] == ["llmq.work.smollm2-135m.batch"]
    assert "the semantic cache could not answer b-1" in caplog.text


def test_only_an_answer_known_to_be_gone_is_forgotten() -> None:
    redis = StreamRedis()
    _fill(redis, "A", [QUESTION])
    cache = _cache(redis)
    stream = redis.streams[semantic_stream_key("A")]

    async def run() -> list[bool]:
        found = [await cache.lookup("A", QUESTION) is not None]
        redis.fails = True  # could not read: kept
        await cache.forget("A", "A-fp0")
        redis.fails = False
        found.append(await cache.lookup("A", QUESTION) is not None)
        redis.strings.add(cache_key("A-fp0"))  # still there: kept
        await cache.forget("A", "A-fp0")
        found.append(await cache.lookup("A", QUESTION) is not None)
        assert len(stream) == 1, "no entry forgets it"
        redis.strings.clear()  # gone: forgotten
        await cache.forget("A", "A-fp0")
        found.append(await cache.lookup("A", QUESTION) is not None)
        return found

    assert asyncio.run(run()) == [True, True, True, False]
    assert len(stream) == 2


def test_an_answer_that_could_not_be_read_is_not_forgotten_by_a_lookup() -> None:
    redis = StreamRedis()
    key = _key(QUESTION)
    _fill(redis, key[0], [QUESTION])
    redis.fails = True  # the exact cache's read failed, and so does EXISTS
    harness = Pipeline(FakeStore(), similar=_cache(redis))
    harness.on_request(None, _batch(QUESTION))
    assert [s.topic for s in harness.send.sent] == ["llmq.work.smollm2-135m.batch"]
    assert len(redis.streams[semantic_stream_key(key[0])]) == 1, "not forgotten"
    store = FakeStore()
    store.answers[f"{key[0]}-fp0"] = answer("Boil it")
    served = Pipeline(store, similar=_cache(redis))
    served.on_request(None, _batch(QUESTION))
    [reply] = served.send.sent
    assert result_of(reply).text == "Boil it"
