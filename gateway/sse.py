"""A streamed answer as server-sent events, exactly as OpenAI sends them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway.openai import Chunks, error_body
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError

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
    ended = False
    try:
        async for event in _answer(chunks, first, pieces):
            yield event
        ended = True
    except (LlmqError, TimeoutError) as exc:
        code = exc.code if isinstance(exc, LlmqError) else ErrorCode.EXPIRED
        _, body = error_body(code, exc.message if isinstance(exc, LlmqError) else str(exc))
        yield f"data: {json.dumps(body)}\n\n"
        ended = True
    finally:
        if not ended and on_abandon is not None:
            on_abandon()
        close: Callable[[], Awaitable[None]] | None = getattr(pieces, "aclose", None)
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
                yield event(f"{sent}{END}", chunks.usage(piece))
            break
        piece = None if pieces is None else await anext(pieces, None)
    yield DONE


def event(event_id: str, body: dict[str, Any]) -> str:
    """One SSE event."""
    return f"id: {event_id}\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
