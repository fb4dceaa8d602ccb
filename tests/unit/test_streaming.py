"""Following a streamed answer: pieces in order, repeats and restarts left out, the rest from
the final result."""

from __future__ import annotations

import pytest

from llmq.streaming import StreamReader
from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatMessage
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    ErrorInfo,
    InferenceResult,
    TokenLogprob,
    Usage,
)
from schemas.stream import TokenDelta

USAGE = Usage(prompt_tokens=4, completion_tokens=3, total_tokens=7)


def _entries(*tokens: str) -> list[TokenLogprob]:
    return [TokenLogprob(token=t, logprob=-1.0) for t in tokens]


def _delta(seq: int, text: str, generation: str = "g1", **more: object) -> TokenDelta:
    return TokenDelta.model_validate(
        {
            "correlation_id": "c",
            "tenant": "t",
            "generation": generation,
            "seq": seq,
            "text": text,
            **more,
        }
    )


def _result(text: str, tokens: list[str] | None = None) -> InferenceResult:
    answer = ChatMessage(role="assistant", content=text)
    logprobs = None if tokens is None else ChoiceLogprobs(content=_entries(*tokens))
    response = ChatCompletion(
        id="x",
        created=1,
        model="m",
        choices=[Choice(message=answer, finish_reason="stop", logprobs=logprobs)],
        usage=USAGE,
    )
    return InferenceResult(correlation_id="c", tenant="t", status="ok", response=response)


def test_pieces_come_in_order_and_the_last_carries_finish_and_usage() -> None:
    reader = StreamReader()
    pieces = [
        reader.take(_delta(0, "Hel")),
        reader.take(_delta(1, "lo")),
        reader.take(_delta(2, "", finish_reason="stop", usage=USAGE.model_dump())),
    ]
    assert [(p.text, p.offset, p.finish_reason) for p in pieces if p] == [
        ("Hel", 0, None),
        ("lo", 3, None),
        ("", 5, "stop"),
    ]
    assert reader.done
    assert pieces[-1] is not None and pieces[-1].usage == USAGE


def test_repeats_gaps_and_other_generations_are_left_out() -> None:
    reader = StreamReader()
    assert reader.take(_delta(1, "late")) is None  # not from the start: not followed
    assert reader.take(_delta(0, "a")) is not None
    assert reader.take(_delta(0, "a")) is None  # a repeat
    assert reader.take(_delta(0, "a", generation="g2")) is None  # started over, saying the same
    assert reader.take(_delta(2, "c")) is None  # a gap
    assert reader.streamed == "a"


def test_the_final_result_brings_what_the_pieces_did_not() -> None:
    reader = StreamReader()
    reader.take(_delta(0, "Hel"))
    last = reader.finish(_result("Hello there"))
    assert (last.text, last.offset, last.finish_reason, last.usage) == (
        "lo there",
        3,
        "stop",
        USAGE,
    )
    assert reader.done


def test_each_piece_has_its_records_logprobs_and_the_result_the_rest() -> None:
    reader = StreamReader()
    first = reader.take(_delta(0, "Hel", logprobs=_entries("H", "el")))
    last = reader.finish(_result("Hello there", ["H", "el", "lo", " there"]))
    assert first is not None and [t.token for t in first.logprobs or ()] == ["H", "el"]
    assert [t.token for t in last.logprobs or ()] == ["lo", " there"]
    cached = StreamReader().finish(_result("Hi", ["Hi"]))
    assert [t.token for t in cached.logprobs or ()] == ["Hi"]
    assert StreamReader().finish(_result("Hi")).logprobs is None  # not asked


def test_a_token_without_text_still_brings_its_logprob() -> None:
    reader = StreamReader()
    piece = reader.take(_delta(0, "", logprobs=_entries("")))
    assert piece is not None and piece.text == "" and len(piece.logprobs or ()) == 1


def test_a_resumed_reader_has_logprobs_from_a_token_on_and_none_inside_one() -> None:
    reader = StreamReader(offset=1)
    cut = reader.take(_delta(0, "Hel", logprobs=_entries("H", "el")))
    after = reader.take(_delta(1, "lo", logprobs=_entries("lo")))
    assert cut is not None and [t.token for t in cut.logprobs or ()] == ["el"]
    assert after is not None and [t.token for t in after.logprobs or ()] == ["lo"]
    inside = StreamReader(offset=2).take(_delta(0, "Hel", logprobs=_entries("H", "el")))
    assert inside is not None and (inside.text, inside.logprobs) == ("l", None)
    stored = _result("Hello", ["H", "el", "lo"])
    assert [t.token for t in StreamReader(offset=3).finish(stored).logprobs or ()] == ["lo"]
    assert StreamReader(offset=4).finish(stored).logprobs is None
    assert StreamReader(offset=5).finish(stored).logprobs == []
    # Tokens that do not spell the text (a character split across tokens): none.
    split = _result("Hé!", ["H", "\ufffd", "\ufffd", "!"])
    assert StreamReader(offset=2).finish(split).logprobs is None


def test_a_resumed_reader_gets_the_answer_after_its_offset() -> None:
    assert StreamReader(offset=6).finish(_result("Hello there")).text == "there"


def test_a_cached_answer_streams_as_one_piece() -> None:
    last = StreamReader().finish(_result("Paris."))
    assert (last.text, last.offset, last.finish_reason) == ("Paris.", 0, "stop")


def test_an_answer_that_differs_from_what_was_streamed_is_an_error() -> None:
    reader = StreamReader()
    reader.take(_delta(0, "Cats"))
    with pytest.raises(LlmqError) as caught:
        reader.finish(_result("Dogs are loyal"))
    assert caught.value.code is ErrorCode.ENGINE_ERROR
    assert "ask again" in caught.value.message


def test_an_error_result_is_raised_with_its_code() -> None:
    error = ErrorInfo(
        code=ErrorCode.RATE_LIMITED, message="slow down", retriable=True, retry_after_s=2
    )
    result = InferenceResult(correlation_id="c", tenant="t", status="error", error=error)
    with pytest.raises(LlmqError) as caught:
        StreamReader().finish(result)
    assert (caught.value.code, caught.value.retry_after_s) == (ErrorCode.RATE_LIMITED, 2)
