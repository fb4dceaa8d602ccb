"""What an AsyncClient keeps of llmq.tokens: every stream of the cluster passes through each
client, so those nobody here reads or awaits stay within a bound; a stream read, awaited or
moved to here is kept whole; a reader of a stream that went gets its answer from the result.
Records are fed as the reply consumer hands them out; Kafka and Redis are away."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator

import pytest

from llmq import stream_logs
from llmq.aio import AsyncClient
from llmq.streaming import Delta
from schemas.request import DEFAULT_TENANT
from schemas.settings import ServiceSettings
from schemas.stream import TokenDelta
from tests.unit.stages import answered

pytestmark = pytest.mark.timeout(120)

NO_REDIS = ServiceSettings(redis_url="redis://127.0.0.1:1/0")
"""Nothing listens there: the result store is away, so only replies answer."""

BUDGET = 64 * 1024
"""UNREAD_BYTES here: a dozen records with top_logprobs=20 (some 5.5 kB each)."""

LOGPROBS = [
    {
        "token": "tok",
        "logprob": -0.5,
        "top_logprobs": [{"token": f"t{i}", "logprob": -1.0} for i in range(20)],
    }
] * 8


def _text(correlation_id: str, seq: int) -> str:
    return f"{correlation_id}:{seq};"


def _record(correlation_id: str, seq: int, last: bool = False) -> bytes:
    """A record of 8 tokens with 20 top logprobs each, as a worker writes it."""
    delta = TokenDelta.model_validate(
        {
            "correlation_id": correlation_id,
            "tenant": DEFAULT_TENANT,
            "generation": "g",
            "seq": seq,
            "text": _text(correlation_id, seq),
            "tokens": 8,
            "logprobs": LOGPROBS,
            "finish_reason": "stop" if last else None,
        }
    )
    return delta.model_dump_json().encode()


def _feed(app: AsyncClient, record: bytes) -> None:
    """Hand a record to the client's reader, keyed as a worker keys it."""
    app._on_delta(record, json.loads(record)["correlation_id"].encode())


def _notice(correlation_id: str, leader: str) -> bytes:
    delta = TokenDelta(correlation_id=correlation_id, tenant=DEFAULT_TENANT, follows=leader)
    return delta.model_dump_json().encode()


def _result(correlation_id: str, text: str) -> bytes:
    return answered(correlation_id, DEFAULT_TENANT, text).model_dump_json().encode()


def _flood(app: AsyncClient, name: str, streams: int, records: int = 4) -> None:
    """Other front doors' streams, nobody here reads: more than BUDGET in all."""
    for i in range(streams):
        for seq in range(records):
            _feed(app, _record(f"{name}-{i}", seq, last=seq == records - 1))


async def _follow(
    app: AsyncClient, correlation_id: str, offset: int = 0
) -> asyncio.Task[list[Delta]]:
    """A follow() of the request, started: it waits for its pieces from now on."""

    async def collect(pieces: AsyncIterator[Delta]) -> list[Delta]:
        return [piece async for piece in pieces]

    task = asyncio.create_task(collect(app.follow(correlation_id, offset=offset, wait_s=600)))
    await asyncio.sleep(0)  # it runs until it waits for the stream
    return task


async def _sent(topic: str, key: str, value: bytes) -> None:
    """The broker took it."""


def test_the_streams_nobody_here_reads_stay_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_logs, "UNREAD_BYTES", BUDGET)

    async def run() -> tuple[int, int, list[str]]:
        app = AsyncClient(NO_REDIS)
        tracemalloc.start()
        held, fed = 0, 0
        try:
            for i in range(80):  # 3.5 MB of records, 56 MB parsed
                for seq in range(8):
                    record = _record(f"other-{i}", seq, last=seq == 7)
                    fed += len(record)
                    _feed(app, record)
                    held = max(held, tracemalloc.get_traced_memory()[0])
        finally:
            tracemalloc.stop()
        # The newest stream is still read from its start, as a resumed stream is.
        newest = await _follow(app, "other-79")
        app._on_result(_result("other-79", "".join(_text("other-79", s) for s in range(8))))
        return held, fed, [piece.text for piece in await newest]

    held, fed, texts = asyncio.run(run())
    assert fed > 40 * BUDGET
    assert held < 2 * BUDGET
    assert texts == [_text("other-79", seq) for seq in range(8)]


def test_a_stream_read_awaited_or_moved_to_here_is_kept_whole_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_logs, "UNREAD_BYTES", BUDGET)
    records = 12

    async def run() -> dict[str, list[Delta]]:
        app = AsyncClient(NO_REDIS)
        app._send = _sent  # type: ignore[method-assign]
        await app.submit("hi", stream=True, correlation_id="asked")  # followed later
        await app.submit("hi", stream=True, correlation_id="copy")  # coalesced with "lead"
        mine = await _follow(app, "mine")
        for seq in range(2):  # another door's request: nobody here reads it yet
            _feed(app, _record("lead", seq))
        _feed(app, _notice("copy", "lead"))
        for seq in range(records):
            last = seq == records - 1
            _feed(app, _record("mine", seq, last))
            _feed(app, _record("asked", seq, last))
            if seq >= 2:
                _feed(app, _record("lead", seq, last))
            _flood(app, f"flood-{seq}", streams=4)
        for name in ("mine", "asked", "lead", "copy"):  # whoever waits ends, kept or not
            text = "".join(_text("lead" if name == "copy" else name, s) for s in range(records))
            app._on_result(_result(name, text))
        return {
            "mine": await mine,
            "asked": await (await _follow(app, "asked")),
            "copy": await (await _follow(app, "copy")),
        }

    read = asyncio.run(run())
    for name, source in (("mine", "mine"), ("asked", "asked"), ("copy", "lead")):
        assert [p.text for p in read[name]] == [_text(source, s) for s in range(records)], name
        assert all(p.logprobs is not None and len(p.logprobs) == 8 for p in read[name])


def test_a_reader_of_a_stream_that_went_gets_its_whole_answer_from_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_logs, "UNREAD_BYTES", BUDGET)
    answer = "".join(_text("gone", seq) for seq in range(8))

    async def run() -> tuple[list[str], list[str]]:
        app = AsyncClient(NO_REDIS)
        for seq in range(4):
            _feed(app, _record("gone", seq))
        _flood(app, "newer", streams=8)  # the stream "gone" goes
        whole = await _follow(app, "gone")
        resumed = await _follow(app, "gone", offset=6)  # a client that had 6 characters
        for seq in range(4, 8):
            _feed(app, _record("gone", seq, last=seq == 7))
        app._on_result(_result("gone", answer))
        return [p.text for p in await whole], [p.text for p in await resumed]

    whole, resumed = asyncio.run(run())
    assert whole == [answer]
    assert resumed == [answer[6:]]


def test_the_records_of_streams_nobody_here_reads_are_not_even_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []
    parse = TokenDelta.model_validate_json

    def counted(data: bytes) -> TokenDelta:
        parsed.append(data)
        return parse(data)

    async def run() -> list[str]:
        app = AsyncClient(NO_REDIS)
        _flood(app, "other", streams=50, records=4)
        assert parsed == []  # 200 records of other doors' streams: kept as they came
        return [piece.text for piece in await (await _follow(app, "other-7"))]

    monkeypatch.setattr(TokenDelta, "model_validate_json", counted)
    texts = asyncio.run(run())
    assert texts == [_text("other-7", seq) for seq in range(4)]  # read when asked for
    assert len(parsed) == 4


def test_two_tenants_streams_of_an_equal_id_each_reach_their_own_reader() -> None:
    def record(tenant: str, seq: int) -> bytes:
        delta = TokenDelta(
            correlation_id="same",
            tenant=tenant,
            generation=tenant,
            seq=seq,
            text=f"{tenant}{seq};",
            finish_reason="stop" if seq == 2 else None,
        )
        return delta.model_dump_json().encode()

    async def run() -> dict[str, list[str]]:
        app = AsyncClient(NO_REDIS)
        for seq in range(3):
            for tenant in ("alice", "bob"):
                app._on_delta(record(tenant, seq), b"same")
        read = {}
        for tenant in ("bob", "alice"):
            pieces = app.follow("same", tenant=tenant, wait_s=600)
            read[tenant] = [piece.text async for piece in pieces]
        return read

    read = asyncio.run(run())
    assert read == {t: [f"{t}{seq};" for seq in range(3)] for t in ("alice", "bob")}


def test_a_stream_ended_and_read_is_kept_as_its_records_not_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stream_logs, "PARSED_AFTER_END_S", 0.0)
    streams, records = 20, 8

    async def run() -> tuple[int, int, list[Delta]]:
        app = AsyncClient(NO_REDIS)
        tracemalloc.start()
        try:
            for i in range(streams):  # each read here to its end, as a front door does
                reader = await _follow(app, f"mine-{i}")
                for seq in range(records):
                    _feed(app, _record(f"mine-{i}", seq, last=seq == records - 1))
                assert len(await reader) == records
            parsed = tracemalloc.get_traced_memory()[0]
            await asyncio.sleep(0.01)
            app._streams.prune()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        # A client that resumes reads the records again, piece by piece (no result comes).
        return parsed, kept, await (await _follow(app, "mine-3", offset=len(_text("mine-3", 0))))

    parsed, kept, resumed = asyncio.run(run())
    assert kept < parsed / 3
    assert [p.text for p in resumed] == [_text("mine-3", seq) for seq in range(1, records)]
    assert all(p.logprobs is not None and len(p.logprobs) == 8 for p in resumed)
