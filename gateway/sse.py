"""A streamed answer as server-sent events, exactly as OpenAI sends them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from fastapi.responses import StreamingResponse
from starlette.types import Message, Send

from gateway.openai import Chunks, begun_within, error_body, summed
from gateway.response_events import ResponseEvents
from llmq.futures import read_outcome
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody
from schemas.result import TokenLogprob, Usage
from schemas.tools import finish_reason, shown, text_before

log = logging.getLogger(__name__)

C = TypeVar("C", bound=Chunks)
P = TypeVar("P", Delta, Delta | None)

DONE = "data: [DONE]\n\n"
KEEPALIVE = "\n"
"""A blank line: with no field before it, it ends no event, and every SSE reader skips it
(the openai SDK's SSEDecoder; vLLM's serving benchmark, which strips each read and so glues
a `:` comment to the next event, losing it). Never a `retry:` line alone: the SDK reads that
as an event of empty data, and fails on it."""
KEEPALIVE_S = 15.0
"""The longest a stream is silent (its first piece to come, a tool call held until whole, a
coalesced copy queued again) before it sends KEEPALIVE: a proxy or load balancer cuts a
response silent for its idle timeout (nginx's proxy_read_timeout, an AWS ALB's: 60 s by
default), mid-answer, or before it started with a 504 that the SDK retries as a new
request, at the end of the queue. A quarter of those 60 s."""
SEND_S = 60.0
"""How long an event may wait to be sent: a client still connected that takes nothing for
this long is taken as gone. Neither Starlette nor uvicorn bounds a write, so the stream
would wait on uvicorn's flow control for ever, holding its answer so far and its waiter. A
minute: far past a reader that is merely slow (TCP buffers take many events meanwhile)."""


class _StalledError(Exception):
    """An event not sent within SEND_S."""


class EventStream(StreamingResponse):
    """The events of a stream as the response, each sent within SEND_S: one that is not ends
    the stream as its client's leaving does (its `events` are closed: their `on_abandon`).
    KEEPALIVE_S without an event sends KEEPALIVE, the events' wait going on."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str], headers: Mapping[str, str]) -> None:
        super().__init__(events, headers=headers)
        self._events = events

    async def stream_response(self, send: Send) -> None:
        sends = _Sends(send)
        keeping = asyncio.create_task(sends.keep_alive())
        keeping.add_done_callback(read_outcome)  # a send it could not make, the next one meets
        try:
            await super().stream_response(sends.send)
        except _StalledError:  # the response stays incomplete: uvicorn closes the connection
            request_id = self.headers.get("x-request-id", "without an X-Request-Id")
            log.warning(
                "stream %s: its client took no event for %g s: ended as if it left",
                request_id,
                SEND_S,
            )
            await self._events.aclose()
        finally:
            keeping.cancel()


@dataclass
class _Sends:
    """A response's messages sent one at a time, each within SEND_S; and, beside them, a
    KEEPALIVE after each KEEPALIVE_S without one, until the last."""

    send_one: Send
    last: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    """When the latest message was sent, on the loop's clock (its timers')."""
    ended: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def send(self, message: Message) -> None:
        """Send `message` once those before it are sent, within SEND_S (_StalledError)."""
        last = message["type"] == "http.response.body" and not message.get("more_body", False)
        try:
            async with asyncio.timeout(SEND_S):
                async with self.lock:
                    if self.ended:  # a keep-alive after the last message, which uvicorn refuses
                        return
                    await self.send_one(message)
                    self.ended = last
        except TimeoutError:
            raise _StalledError from None
        self.last = asyncio.get_running_loop().time()

    async def keep_alive(self) -> None:
        """KEEPALIVE after each KEEPALIVE_S without a message, until the last one."""
        blank = {"type": "http.response.body", "body": KEEPALIVE.encode(), "more_body": True}
        while not self.ended:
            silent_s = asyncio.get_running_loop().time() - self.last
            if silent_s < KEEPALIVE_S:
                await asyncio.sleep(KEEPALIVE_S - silent_s)
            else:
                await self.send(blank)


First = Delta | Awaitable[Delta]
"""An answer's first piece; or, where its stream starts before it came (past
routes.HEADERS_WAIT_S), what awaits it: the stream opens at once (KEEPALIVE, or a response's
first events), and an error before it comes is an error event, as after it."""


def events(
    chunks: Chunks,
    first: Delta | Awaitable[Delta | None] | None,
    pieces: AsyncIterator[Delta] | None,
    on_abandon: Callable[[], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> AsyncGenerator[str]:
    """The events of an answer from its `first` piece on, each one `data:` line with no
    event id, as OpenAI's and vLLM's servers send them (tools written for those, vLLM's
    serving benchmark among them, read an event as that one line). A client that loses the
    stream resumes with the count of characters it has (GET /v1/results/{id}/stream with
    Last-Event-ID). A piece without text sends no event of its own: its logprobs go with
    the next, or with the finish. An answer of tool calls sends them whole, once read from
    its whole text (under "auto", the text before them as it comes). The chunks name the
    model of the first piece. An error after the first piece (or after the stream opened
    without it: see First) is an error event, after a call of `on_error` with it. A client
    that leaves before the end calls `on_abandon`."""
    answer = (_calls if chunks.calls_tools else _answer)(chunks, first, pieces)
    return _guarded(answer, [] if pieces is None else [pieces], on_abandon, on_error=on_error)


def choices(
    chunks: Chunks,
    firsts: Sequence[First],
    streams: list[AsyncIterator[Delta]],
    on_stop: Callable[[], None] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> AsyncGenerator[str]:
    """The events of n answers at once (`n` > 1), from each one's first piece on: each
    chunk carries its choice's index, in the order the pieces come, and the usage (asked
    for) comes summed after every choice has finished; answers that may be tool calls
    come as `events` sends one, each with its index. Such a stream does not resume. An
    error in one answer ends them all (an error event) and calls `on_error`; a client that
    leaves before the end calls `on_stop`: either cancels the others."""
    answer = _interleaved(chunks, firsts, streams)
    return _guarded(answer, streams, on_stop, on_error=on_error)


def response_events(
    shape: ResponseEvents,
    first: First,
    pieces: AsyncIterator[Delta],
    on_abandon: Callable[[], None] | None = None,
    *,
    keep: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    on_error: Callable[[Exception], None] | None = None,
) -> AsyncGenerator[str]:
    """The events of a streamed response (OpenAI's Responses API), each named by its type,
    from the answer's first piece on (function calls once the answer is whole); the whole
    `response` goes to `keep` before the last event, which carries it; it names the model
    of the first piece (but for the events sent before it came). Such a stream does not
    resume (the resume route sends chunks). An error after the first piece (or after the
    stream opened without it) calls `on_error` and is an `error` event, then
    `response.failed`; a client that leaves before the end calls `on_abandon`."""
    answer = (_called if shape.calls_tools else _response)(shape, first, pieces, keep)
    return _guarded(
        answer,
        [pieces],
        on_abandon,
        on_error=on_error,
        failed=lambda code, message: [named(body) for body in shape.failed(code, message)],
    )


async def _response(
    shape: ResponseEvents,
    first: First,
    pieces: AsyncIterator[Delta],
    keep: Callable[[dict[str, Any]], Awaitable[None]] | None,
) -> AsyncGenerator[str]:
    for body in shape.starting() if _coming(first) else []:
        yield named(body)
    came = await _arrived(first)
    shape.model = came.model or shape.model
    for body in shape.opening():
        yield named(body)
    held: list[TokenLogprob] = []  # tokens that brought no text yet
    async for piece in _until_finished(came, pieces):
        held += piece.logprobs or []
        if piece.text:
            for body in shape.delta(piece.text, held):
                yield named(body)
            held = []
        if piece.finish_reason is not None:
            closing = shape.closing(piece.finish_reason, held, piece.usage)
            async for event in _closed(closing, keep):
                yield event


async def _called(
    shape: ResponseEvents,
    first: First,
    pieces: AsyncIterator[Delta],
    keep: Callable[[dict[str, Any]], Awaitable[None]] | None,
) -> AsyncGenerator[str]:
    """The events of a response that may be function calls: the opening; under "auto", its
    text as it comes but for where a call may be beginning; once whole, the rest of its
    text, or its calls."""
    for body in shape.starting() if _coming(first) else []:
        yield named(body)
    came = await _arrived(first)
    shape.model = came.model or shape.model
    for body in shape.opening():
        yield named(body)
    showing = _Showing.of(shape.body)
    async for piece in _until_finished(came, pieces):
        text, logprobs = showing.add(piece)
        for body in shape.delta(text, logprobs) if text else []:
            yield named(body)
        if piece.finish_reason is not None:
            closing = shape.calls(
                showing.text, showing.sent, showing.held, piece.finish_reason, piece.usage
            )
            async for event in _closed(closing, keep):
                yield event


async def _closed(
    closing: list[dict[str, Any]], keep: Callable[[dict[str, Any]], Awaitable[None]] | None
) -> AsyncGenerator[str]:
    """A response's last events, the whole response kept (stored) before them."""
    if keep is not None:
        await keep(closing[-1]["response"])
    for body in closing:
        yield named(body)  # and no [DONE]: OpenAI ends these streams with the last


async def _guarded(
    answer: AsyncGenerator[str],
    streams: list[AsyncIterator[Delta]],
    on_abandon: Callable[[], None] | None,
    *,
    on_error: Callable[[Exception], None] | None = None,
    failed: Callable[[ErrorCode, str], list[str]] | None = None,
) -> AsyncGenerator[str]:
    """`answer`'s events; an error in it calls `on_error` and becomes an error event (chat's,
    or the events `failed` makes of its code and message), and a client that leaves before
    the end calls `on_abandon`. `answer`, then the streams, are closed either way."""
    ended = False
    try:
        async for line in answer:
            yield line
        ended = True
    except (LlmqError, TimeoutError) as exc:
        ended = _failing(on_error, exc)
        for event in _error_events(exc, failed):
            yield event
        ended = True
    except Exception as exc:
        ended = _failing(on_error, exc)
        raise
    finally:
        if not ended and on_abandon is not None:
            on_abandon()
        await answer.aclose()
        for stream in streams:
            close: Callable[[], Awaitable[None]] | None = getattr(stream, "aclose", None)
            if close is not None:
                await close()


def _error_events(
    exc: LlmqError | TimeoutError, failed: Callable[[ErrorCode, str], list[str]] | None
) -> list[str]:
    """The events that tell of an error: chat's error event, or those `failed` makes."""
    code = exc.code if isinstance(exc, LlmqError) else ErrorCode.EXPIRED
    message = exc.message if isinstance(exc, LlmqError) else str(exc)
    return [data(error_body(code, message)[1])] if failed is None else failed(code, message)


def _failing(on_error: Callable[[Exception], None] | None, exc: Exception) -> bool:
    """Call `on_error` with `exc`, if any: whether it was (a client leaving then is not
    abandoning)."""
    if on_error is None:
        return False
    on_error(exc)
    return True


async def _answer(
    chunks: Chunks,
    first: Delta | Awaitable[Delta | None] | None,
    pieces: AsyncIterator[Delta] | None,
) -> AsyncGenerator[str]:
    if _coming(first):
        yield KEEPALIVE
    came = await _arrived(first)
    chunks = _served(chunks, came)
    opening = chunks.role()
    if came is not None and came.offset == 0 and opening is not None:
        yield data(opening)
    held: list[TokenLogprob] = []
    async for piece in _until_finished(came, pieces):
        content, finish = _bodies(chunks, piece, held)
        if content is not None:
            yield data(content)
        if finish is not None:
            yield data(finish)
            if chunks.include_usage:
                yield data(chunks.usage(piece.usage))
    yield DONE


async def _calls(
    chunks: Chunks,
    first: Delta | Awaitable[Delta | None] | None,
    pieces: AsyncIterator[Delta] | None,
) -> AsyncGenerator[str]:
    """The chunks of an answer that may be tool calls: the role; under "auto", its text as
    it comes, but for where a call may be beginning (held until it is text for certain);
    once whole, the rest of its text, or its calls, each whole (their arguments are JSON,
    of no use to a client half written); then the finish. Log-probabilities come with the
    first chunk after their tokens."""
    if _coming(first):
        yield KEEPALIVE
    came = await _arrived(first)
    chunks = _served(chunks, came)
    opening = chunks.role()
    if opening is not None:
        yield data(opening)
    showing = _Showing.of(chunks.body)
    async for piece in _until_finished(came, pieces):
        for body in _called_bodies(chunks, showing, piece):
            yield data(body)
        if piece.finish_reason is not None and chunks.include_usage:
            yield data(chunks.usage(piece.usage))
    yield DONE


def _called_bodies(
    chunks: Chunks, showing: _Showing, piece: Delta, index: int = 0
) -> list[dict[str, Any]]:
    """A piece's chunks, of a choice (`index`) that may be tool calls: the text it makes
    certain (`showing`); once the answer is whole, the rest of its text, or its calls
    (after the text before them not sent yet), then the finish."""
    body = chunks.body
    choice, asked = (None, False) if body is None else (body.tool_choice, body.logprobs)
    said, held = showing.add(piece)
    bodies = [chunks.content(said, held if asked and held else None, index)] if said else []
    if piece.finish_reason is None:
        return bodies
    text, sent = showing.text, showing.sent
    calls = chunks.calls_of(text)
    rest = (text_before(text) or "")[sent:] if calls else text[sent:]
    logprobs = showing.held if asked and showing.held else None
    if calls and logprobs:  # the text's tokens alone, as OpenAI's are
        # Held from where the pieces sent so far ended, which may be past the text shown.
        start = len(text) - sum(len(t.token) for t in logprobs)
        within = len(text_before(text) or "") - start
        logprobs = logprobs[: begun_within((t.token for t in logprobs), within)] or None
    if rest:
        bodies.append(chunks.content(rest, logprobs, index))
    if calls:
        bodies.append(chunks.calls(calls, None, index))
    last = None if calls or rest else logprobs
    reason = finish_reason(choice, calls, piece.finish_reason)
    return [*bodies, chunks.finish(reason, last, index)]


async def _interleaved(
    chunks: Chunks, firsts: Sequence[First], streams: list[AsyncIterator[Delta]]
) -> AsyncGenerator[str]:
    """The chunks of several answers: each one's role first, then their pieces as they
    come (answers that may be tool calls as `_calls` sends one), then the usage summed."""
    if _coming(*firsts):
        yield KEEPALIVE
    came = await _each(firsts)
    chunks = _served(chunks, came[0])
    for opening in filter(None, map(chunks.role, range(len(came)))):  # text has no roles
        yield data(opening)
    usages: list[Usage] = []
    held: list[list[TokenLogprob]] = [[] for _ in came]
    showing = [_Showing.of(chunks.body) for _ in came]
    answers = [_until_finished(f, s) for f, s in zip(came, streams, strict=True)]
    merged = _merged(answers)
    try:
        async for index, piece in merged:
            if chunks.calls_tools:
                bodies = _called_bodies(chunks, showing[index], piece, index)
            else:
                bodies = [b for b in _bodies(chunks, piece, held[index], index) if b is not None]
            for body in bodies:
                yield data(body)
            if piece.finish_reason is not None:
                usages += [] if piece.usage is None else [piece.usage]
    finally:
        await merged.aclose()  # its pumps stop before the streams they read are closed
    if chunks.include_usage:
        yield data(chunks.usage(summed(usages)))
    yield DONE


@dataclass
class _Showing:
    """An answer that may be calls, read as it comes: its text so far, how much of it was
    shown (under "auto", all that is text for certain: held back only where a call may be
    beginning, and the space before it), and the log-probabilities of tokens not shown."""

    auto: bool
    text: str = ""
    sent: int = 0
    held: list[TokenLogprob] = field(default_factory=list)

    @classmethod
    def of(cls, body: ChatBody | None) -> _Showing:
        """For an answer to `body`: its text shown as it comes under "auto" only."""
        return cls(body is not None and body.chooses_calls)

    def add(self, piece: Delta) -> tuple[str, list[TokenLogprob]]:
        """The text a piece that does not finish the answer makes certain ("" if none),
        with the log-probabilities of its tokens; the last piece's is left to the caller."""
        self.text += piece.text
        self.held += piece.logprobs or []
        certain = self.auto and piece.finish_reason is None
        upto = shown(self.text, self.sent) if certain else self.sent
        if upto == self.sent:
            return "", []
        said, logprobs = self.text[self.sent : upto], self.held
        self.sent, self.held = upto, []
        return said, logprobs


def _bodies(
    chunks: Chunks, piece: Delta, held: list[TokenLogprob], index: int = 0
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """A piece's content chunk and finish chunk, None where it has none. A piece without
    text has no content chunk: the logprobs of its tokens, whose text is yet to come, are
    `held` for the next piece with text, or for the finish."""
    content = None
    if not piece.text:
        held += piece.logprobs or []
    else:
        own = piece.logprobs
        logprobs = None if not held and own is None else [*held, *(own or [])]
        content = chunks.content(piece.text, logprobs, index, piece.offset)
        held.clear()
    finish = None
    if piece.finish_reason is not None:
        end = piece.offset + len(piece.text)
        finish = chunks.finish(piece.finish_reason, held or None, index, end)
    return content, finish


def _coming(*firsts: object) -> bool:
    """Whether a first piece is still to come (an awaitable of it: see First)."""
    return any(isinstance(first, Awaitable) for first in firsts)


async def _arrived(first: P | Awaitable[P]) -> P:
    """The first piece, once it came."""
    return await first if isinstance(first, Awaitable) else first


async def _each(firsts: Sequence[First]) -> list[Delta]:
    """Each answer's first piece, once every one came. An error in one (or the wait's own
    cancel) cancels the waits for the others, awaited: their streams are closed next, which
    a wait still reading one would refuse."""
    waits = [asyncio.ensure_future(_arrived(first)) for first in firsts]
    try:
        return await asyncio.gather(*waits)
    finally:
        for wait in waits:
            wait.cancel()
        if left := [wait for wait in waits if not wait.done()]:
            await asyncio.wait(left)


def _served(chunks: C, first: Delta | None) -> C:
    """The chunks in the name of the model that served the answer: its first piece's."""
    return chunks if first is None or first.model is None else replace(chunks, model=first.model)


async def _until_finished(
    first: Delta | None, pieces: AsyncIterator[Delta] | None
) -> AsyncIterator[Delta]:
    """One answer's pieces from `first` to the one that finishes it (or the last there is)."""
    piece = first
    while piece is not None:
        yield piece
        if piece.finish_reason is not None:
            return
        piece = None if pieces is None else await anext(pieces, None)


async def _merged(answers: list[AsyncIterator[Delta]]) -> AsyncGenerator[tuple[int, Delta]]:
    """The pieces of several answers as they come, each with its answer's index; the first
    error of any ends them all."""
    arrivals: asyncio.Queue[tuple[int, Delta | Exception | None]] = asyncio.Queue()

    async def pump(index: int, answer: AsyncIterator[Delta]) -> None:
        try:
            async for piece in answer:
                await arrivals.put((index, piece))
        except Exception as exc:  # the reader raises it: one answer's failure ends the rest
            await arrivals.put((index, exc))
        finally:
            arrivals.put_nowait((index, None))

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


def named(body: dict[str, Any]) -> str:
    """One SSE event named by its body's type (the Responses API's)."""
    return f"event: {body['type']}\n{data(body)}"


def data(body: dict[str, Any]) -> str:
    """One SSE event: its `data:` line."""
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
