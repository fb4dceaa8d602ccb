"""A streamed generation's pieces: batched, numbered, and never a reason to fail it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

import pytest

from schemas.request import ChatBody, ChatMessage, InferenceRequest
from schemas.result import TokenLogprob, Usage
from schemas.route import Route
from schemas.stream import TokenDelta
from schemas.work import WorkItem
from workers.engine import EngineStep
from workers.tokens import DeltaPolicy, DeltaStream

WORK = WorkItem(
    request=InferenceRequest(
        correlation_id="c1",
        tenant="acme",
        body=ChatBody(messages=[ChatMessage(role="user", content="hi")], stream=True),
    ),
    model="m",
    fingerprint="0" * 64,
    route=Route(requested="m", chain=["m"]),
)
LOGPROBS = WORK.model_copy(
    update={
        "request": WORK.request.model_copy(
            update={"body": WORK.request.body.model_copy(update={"logprobs": True})}
        )
    }
)
"""A request that asks for logprobs."""
USAGE = Usage(prompt_tokens=2, completion_tokens=5, total_tokens=7)


def _step(text: str = "x") -> EngineStep:
    return EngineStep(text, 1, 2)


class _Broker:
    """Takes every record at once and keeps it."""

    def __init__(self) -> None:
        self.sent: list[TokenDelta] = []

    async def send(self, topic: str, value: bytes, key: bytes) -> Awaitable[object]:
        self.sent.append(TokenDelta.model_validate_json(value))
        done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_pieces_are_batched_by_tokens_and_numbered() -> None:
    broker = _Broker()
    sent = broker.sent

    async def main() -> None:
        stream = DeltaStream(broker.send, WORK, "g1", DeltaPolicy(interval_s=3600, max_tokens=2))
        for text in "abcde":
            await stream.add(_step(text))
        await stream.finish("stop", USAGE)

    asyncio.run(main())
    assert [(d.seq, d.text, d.tokens) for d in sent] == [
        (0, "a", 1),  # the first token at once
        (1, "bc", 2),
        (2, "de", 2),
        (3, "", 0),
    ]
    assert sent[-1].finish_reason == "stop" and sent[-1].usage == USAGE
    assert {(d.correlation_id, d.tenant, d.generation, d.model) for d in sent} == {
        ("c1", "acme", "g1", "m")
    }


def test_each_piece_carries_its_own_tokens_logprobs_when_asked() -> None:
    broker = _Broker()
    sent = broker.sent

    def step(text: str) -> EngineStep:
        return EngineStep(text, 1, 2, logprobs=[TokenLogprob(token=text, logprob=-len(text))])

    async def main(work: WorkItem) -> None:
        stream = DeltaStream(broker.send, work, "g1", DeltaPolicy(interval_s=3600, max_tokens=2))
        for text in ("a", "bb", "ccc"):
            await stream.add(step(text))
        await stream.finish("stop", USAGE)

    asyncio.run(main(LOGPROBS))
    assert [[(t.token, t.logprob) for t in d.logprobs or ()] for d in sent] == [
        [("a", -1)],
        [("bb", -2), ("ccc", -3)],
        [],
    ]
    sent.clear()
    asyncio.run(main(WORK))  # not asked: the engine's logprobs (a cascade's) stay out
    assert sent and all(d.logprobs is None for d in sent)


def test_tokens_whose_text_is_held_back_wait_for_the_next_record_with_text() -> None:
    """A character split over tokens: the detokenizer gives their text with the last one.
    Every record but the last adds text, so the characters a stream has sent grow each time."""
    broker = _Broker()

    def step(text: str, token: str) -> EngineStep:
        return EngineStep(text, 1, 2, logprobs=[TokenLogprob(token=token, logprob=-1.0)])

    async def main() -> None:
        stream = DeltaStream(broker.send, LOGPROBS, "g1", DeltaPolicy(interval_s=0, max_tokens=1))
        for text, token in (("", "\ufffd"), ("é", "é"), ("a", "a"), ("", "\ufffd")):
            await stream.add(step(text, token))
        await stream.finish("length", USAGE)

    asyncio.run(main())
    assert [(d.seq, d.text, d.tokens) for d in broker.sent] == [
        (0, "é", 2),
        (1, "a", 1),
        (2, "", 1),
    ]
    assert [[t.token for t in d.logprobs or ()] for d in broker.sent] == [
        ["\ufffd", "é"],
        ["a"],
        ["\ufffd"],
    ]


def test_a_broker_that_refuses_pieces_does_not_fail_the_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def send(topic: str, value: bytes, key: bytes) -> Awaitable[object]:
        raise ConnectionError("broker away")

    async def main() -> None:
        stream = DeltaStream(send, WORK, "g1", DeltaPolicy())
        await stream.add(_step())
        await stream.finish("stop", USAGE)

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert "was not queued" in caplog.text


def test_a_piece_that_cannot_be_built_is_logged_and_the_stream_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pieces are a preview, as when the broker refuses one: the final result is the truth."""
    broker = _Broker()

    async def main() -> None:
        pieces = DeltaStream(broker.send, WORK, "g1", DeltaPolicy(interval_s=0))
        await pieces.add(EngineStep("a", 1, 2))
        await pieces.add(EngineStep("b", -5, 2))  # a count TokenDelta refuses
        await pieces.add(EngineStep("c", 1, 2))
        await pieces.finish("stop", USAGE)

    with caplog.at_level(logging.WARNING):
        asyncio.run(main())
    assert [(d.seq, d.text) for d in broker.sent] == [(0, "a"), (2, "c"), (3, "")]
    assert "was not queued" in caplog.text
    assert "-5" not in caplog.text  # described without the refused input


def test_a_stream_that_lost_its_claim_keeps_nothing_of_later_steps() -> None:
    """It joined the whole answer so far at every step (quadratic), to send nothing."""
    broker = _Broker()
    asked: list[str] = []

    async def refused(tenant: str, correlation_id: str) -> bool:
        asked.append(correlation_id)
        return False

    async def main() -> DeltaStream:
        pieces = DeltaStream(broker.send, WORK, "g1", DeltaPolicy(interval_s=0), refused)
        for _ in range(50):
            await pieces.add(EngineStep("x", 1, 2))
        await pieces.finish("stop", USAGE)
        return pieces

    pieces = asyncio.run(main())
    assert (broker.sent, asked) == ([], ["c1"])
    assert (pieces._text, pieces._tokens) == (["x"], 1)  # the step that asked, no later one
