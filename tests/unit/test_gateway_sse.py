"""Streamed answers as events: several choices as one response (each chunk names its choice,
the usage comes summed at the end, an error in any choice ends the stream with an error
event), and one answer's events, each one `data:` line."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator

import pytest
from openai.types.chat import ChatCompletionChunk

from gateway import sse
from gateway.openai import Chunks
from gateway.text import TextChunks
from llmq.streaming import Delta
from schemas.errors import ErrorCode, LlmqError
from schemas.result import TokenLogprob, Usage


def _usage(completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=4, completion_tokens=completion_tokens, total_tokens=4 + completion_tokens
    )


async def _pieces(*pieces: Delta | LlmqError) -> AsyncIterator[Delta]:
    for piece in pieces:
        await asyncio.sleep(0)  # let the other answer's pieces interleave
        if isinstance(piece, LlmqError):
            raise piece
        yield piece


def _run(firsts: list[Delta], streams: list[AsyncIterator[Delta]]) -> list[str]:
    chunks = Chunks("c1", 7, "m", include_usage=True)

    async def main() -> list[str]:
        return [e async for e in sse.choices(chunks, firsts, streams)]

    return asyncio.run(main())


def test_each_chunk_names_its_choice_and_the_usage_comes_summed() -> None:
    events = _run(
        [Delta("Hel", 0), Delta("Yo", 0)],
        [
            _pieces(Delta("lo", 3), Delta("", 5, "stop", _usage(2))),
            _pieces(Delta("!", 2, "length", _usage(3))),
        ],
    )
    assert events[-1] == sse.DONE and all(e.startswith("data: {") for e in events[:-1])
    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]
    *answers, usage = read
    assert [(c.choices[0].index, c.choices[0].delta.role) for c in answers[:2]] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    text = {0: "", 1: ""}
    finished = {}
    for chunk in answers[2:]:
        choice = chunk.choices[0]
        text[choice.index] += choice.delta.content or ""
        if choice.finish_reason:
            finished[choice.index] = choice.finish_reason
    assert text == {0: "Hello", 1: "Yo!"} and finished == {0: "stop", 1: "length"}
    assert usage.choices == [] and usage.usage is not None
    assert (usage.usage.prompt_tokens, usage.usage.completion_tokens) == (4, 5)


def test_an_error_in_one_choice_ends_the_stream_with_an_error_event() -> None:
    failed = LlmqError(ErrorCode.ENGINE_ERROR, "the engine failed")
    events = _run(
        [Delta("a", 0), Delta("b", 0)],
        [_pieces(Delta("a", 1), failed), _pieces(Delta("", 1, "stop", _usage(1)))],
    )
    assert sse.DONE not in events
    assert json.loads(events[-1][6:])["error"]["code"] == "engine_error"


def test_an_error_in_one_choice_cancels_the_others() -> None:
    """As a failure (`on_error`), not as a client leaving (`on_stop`)."""
    stopped: list[bool] = []
    chunks = Chunks("c1", 7, "m", include_usage=False)
    failed = LlmqError(ErrorCode.RATE_LIMITED, "slow down")
    streams = [_pieces(failed), _pieces(Delta("", 1, "stop"))]

    async def main() -> list[str]:
        events = sse.choices(
            chunks, [Delta("a", 0), Delta("b", 0)], streams, _left, lambda exc: stopped.append(True)
        )
        return [e async for e in events]

    events = asyncio.run(main())
    assert stopped == [True] and "rate_limited" in events[-1]


def test_an_unexpected_failure_of_one_choice_ends_the_stream() -> None:
    """Not only llmq's own errors: anything a choice's stream raises reaches the reader."""
    stopped: list[bool] = []
    chunks = Chunks("c1", 7, "m", include_usage=False)

    async def broken() -> AsyncIterator[Delta]:
        yield Delta("x", 1)
        raise ConnectionError("redis away")

    async def main() -> None:
        events = sse.choices(
            chunks,
            [Delta("a", 0), Delta("b", 0)],
            [broken(), _pieces()],
            _left,
            lambda exc: stopped.append(True),
        )
        async for _ in events:
            pass

    with pytest.raises(ConnectionError):
        asyncio.run(main())
    assert stopped == [True]


def test_a_client_that_leaves_is_told_at_once() -> None:
    """Closing the events (the server does when its client goes) calls on_abandon then,
    not when the garbage collector gets to them."""
    left: list[bool] = []
    chunks = Chunks("c1", 7, "m", include_usage=False)

    async def endless() -> AsyncIterator[Delta]:
        while True:
            await asyncio.sleep(0)
            yield Delta("x", 1)

    async def main(events: AsyncGenerator[str]) -> None:
        await anext(events)
        await events.aclose()
        assert left == [True]

    asyncio.run(main(sse.events(chunks, Delta("a", 0), endless(), lambda: left.append(True))))
    left.clear()
    many = sse.choices(
        chunks, [Delta("a", 0)] * 2, [endless(), endless()], lambda: left.append(True)
    )
    asyncio.run(main(many))


def _entry(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=-1.0)


def test_a_piece_without_text_sends_no_event_of_its_own() -> None:
    """Tokens whose text is held back (a character split over tokens) bring logprobs and
    no text: their entries go with the next event that has text, or with the finish."""
    chunks = Chunks("c1", 7, "m", include_usage=False)
    first = Delta("a", 0, logprobs=[_entry("a")])
    pieces = _pieces(
        Delta("", 1, logprobs=[_entry("\ufffd")]),
        Delta("é", 1, logprobs=[_entry("é")]),
        Delta("", 2, "length", _usage(4), logprobs=[_entry("\ufffd")]),
    )

    async def main() -> list[str]:
        return [e async for e in sse.events(chunks, first, pieces)]

    events = asyncio.run(main())
    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-1]]
    entries = [
        [t.token for t in (c.choices[0].logprobs and c.choices[0].logprobs.content) or ()]
        for c in read
    ]
    assert entries == [[], ["a"], ["\ufffd", "é"], ["\ufffd"]]
    assert read[-1].choices[0].finish_reason == "length"


def test_each_choice_holds_its_own_text_less_logprobs_for_its_finish() -> None:
    split = Delta("", 1, "length", _usage(2), logprobs=[_entry("\ufffd")])
    events = _run(
        [Delta("a", 0, logprobs=[_entry("a")]), Delta("b", 0, logprobs=[_entry("b")])],
        [_pieces(split), _pieces(Delta("c", 1, "stop", _usage(2), logprobs=[_entry("c")]))],
    )
    read = [ChatCompletionChunk.model_validate(json.loads(e[6:])) for e in events[:-2]]
    seen = {
        (c.choices[0].index, c.choices[0].delta.content, c.choices[0].finish_reason): [
            t.token for t in (c.choices[0].logprobs and c.choices[0].logprobs.content) or ()
        ]
        for c in read[2:]
    }
    assert seen == {
        (0, "a", None): ["a"],
        (1, "b", None): ["b"],
        (0, None, "length"): ["\ufffd"],
        (1, "c", None): ["c"],
        (1, None, "stop"): [],
    }


@pytest.mark.parametrize(
    ("kind", "texts"), [(Chunks, ["", "a", "b", None, None]), (TextChunks, ["a", "b", "", None])]
)
def test_a_streams_events_are_one_data_line_each_as_from_vllms_server(
    kind: type[Chunks], texts: list[str | None]
) -> None:
    """Tools written for vLLM's server (its serving benchmark) read an event as one `data:`
    line: a stream sends no ids (its client counts the characters to resume)."""
    chunks = kind("c1", 7, "m", include_usage=True)
    pieces = _pieces(Delta("b", 1, "length", _usage(2)))

    async def main() -> list[str]:
        return [e async for e in sse.events(chunks, Delta("a", 0), pieces)]

    events = asyncio.run(main())
    assert all(e.startswith("data: ") and e.count("\n") == 2 for e in events)
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    choices = [b["choices"][0] if b["choices"] else {} for b in bodies]
    assert [c.get("text", c.get("delta", {}).get("content")) for c in choices] == texts
    assert events[-1] == sse.DONE


def _left() -> None:
    raise AssertionError("a failure is not a client leaving")
