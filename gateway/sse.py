"""A streamed answer as server-sent events, exactly as OpenAI sends them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.openai import Chunks, error_body, summed
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError
from schemas.result import Usage

END = ":end"
"""The suffix of the last events' ids: a client that resumes after them gets [DONE] only."""
DONE = "data: [DONE]\n\n"


async def events(
    chunks: Chunks,
    first: Delta | None,
    pieces: AsyncIterator[Delta] | None,
    on_abandon: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    """The events of an answer from its `first` piece on. Each content event's id is the
    count of characters sent so far, so a client that loses the stream resumes there
    (GET /v1/results/{id}/stream with Last-Event-ID). An error after the first piece is an
    error event. A client that leaves before the end calls `on_abandon`."""
    answer = _answer(chunks, first, pieces)
    async for line in _guarded(answer, [] if pieces is None else [pieces], on_abandon):
        yield line


async def choices(
    chunks: Chunks,
    firsts: list[Delta],
    streams: list[AsyncIterator[Delta]],
    on_abandon: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    """The events of n answers at once (`n` > 1), from each one's first piece on: each
    chunk carries its choice's index, in the order the pieces come, and the usage (asked
    for) comes summed after every choice has finished. Such a stream has no event ids: it
    does not resume."""
    answer = _interleaved(chunks, firsts, streams)
    async for line in _guarded(answer, streams, on_abandon):
        yield line


async def _guarded(
    answer: AsyncIterator[str],
    streams: list[AsyncIterator[Delta]],
    on_abandon: Callable[[], None] | None,
) -> AsyncIterator[str]:
    """`answer`'s events; an error in it becomes an error event, and a client that leaves
    before the end calls `on_abandon`. The streams are closed either way."""
    ended = False
    try:
        async for line in answer:
            yield line
        ended = True
    except (LlmqError, TimeoutError) as exc:
        code = exc.code if isinstance(exc, LlmqError) else ErrorCode.EXPIRED
        _, body = error_body(code, exc.message if isinstance(exc, LlmqError) else str(exc))
        yield f"data: {json.dumps(body)}\n\n"
        ended = True
    finally:
        if not ended and on_abandon is not None:
            on_abandon()
        for stream in streams:
            close: Callable[[], Awaitable[None]] | None = getattr(stream, "aclose", None)
            if close is not None:
                await close()


async def _answer(
    chunks: Chunks, first: Delta | None, pieces: AsyncIterator[Delta] | None
) -> AsyncIterator[str]:
    piece = first
    if piece is not None and piece.offset == 0:
        yield event("0", chunks.role())
    while piece is not None:
        sent = piece.offset + len(piece.text)
        if piece.text or piece.logprobs:
            yield event(str(sent), chunks.content(piece.text, piece.logprobs))
        if piece.finish_reason is not None:
            yield event(f"{sent}{END}", chunks.finish(piece.finish_reason))
            if chunks.include_usage:
                yield event(f"{sent}{END}", chunks.usage(piece.usage))
            break
        piece = None if pieces is None else await anext(pieces, None)
    yield DONE


async def _interleaved(
    chunks: Chunks, firsts: list[Delta], streams: list[AsyncIterator[Delta]]
) -> AsyncIterator[str]:
    for index in range(len(firsts)):
        yield data(chunks.role(index))
    usages: list[Usage] = []
    answers = [_until_finished(f, s) for f, s in zip(firsts, streams, strict=True)]
    async for index, piece in _merged(answers):
        if piece.text or piece.logprobs:
            yield data(chunks.content(piece.text, piece.logprobs, index))
        if piece.finish_reason is not None:
            yield data(chunks.finish(piece.finish_reason, index))
            usages += [] if piece.usage is None else [piece.usage]
    if chunks.include_usage:
        yield data(chunks.usage(summed(usages)))
    yield DONE


async def _until_finished(first: Delta, pieces: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """One answer's pieces from `first` to the one that finishes it."""
    piece: Delta | None = first
    while piece is not None:
        yield piece
        if piece.finish_reason is not None:
            return
        piece = await anext(pieces, None)


async def _merged(answers: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """The pieces of several answers as they come, each with its answer's index; the first
    error of any ends them all."""
    arrivals: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(index: int, answer: AsyncIterator[Delta]) -> None:
        try:
            async for piece in answer:
                await arrivals.put((index, piece))
        except (LlmqError, TimeoutError) as exc:
            await arrivals.put((index, exc))
        await arrivals.put((index, None))

    pumps = [asyncio.create_task(pump(i, answer)) for i, answer in enumerate(answers)]
    try:
        left = len(answers)
        while left:
            index, item = await arrivals.get()
            if isinstance(item, Exception):
                raise item
            if item is None:
                left -= 1
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


def data(body: dict[str, Any]) -> str:
    """One SSE event without an id."""
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def event(event_id: str, body: dict[str, Any]) -> str:
    """One SSE event."""
    return f"id: {event_id}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
