"""EmbedQueue: one text per model call, one call at a time in each line, lookups never behind
the background, vectors reused."""

from __future__ import annotations

import asyncio
import threading

import numpy as np

from streams.embed_queue import MAX_AHEAD, MAX_LATER, RECENT, EmbedQueue
from streams.semantic_index import Vector

WAIT_S = 10.0


class Model:
    """Records each call's texts; a call blocks while `gate` is clear. A vector's first
    entry is the text's length, so a caller can tell it got its own."""

    dimensions = 4

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.held: str | None = None
        """Only a call of this text waits for `gate`, when set; else every call does."""
        self.inside = 0
        self.most_inside = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_on = fail_on

    def embed(self, texts: list[str]) -> Vector:
        self.calls.append(list(texts))
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        self.entered.set()
        try:
            if self.held is None or self.held in texts:
                assert self.gate.wait(WAIT_S)
            if self.fail_on in texts:
                raise RuntimeError("model broke")
            return np.asarray([[len(t), 0.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        finally:
            self.inside -= 1

    def order(self, *texts: str) -> list[str]:
        """These texts in the order the model was called with them."""
        return [call[0] for call in self.calls if call[0] in texts]


async def _busy(model: Model, queue: EmbedQueue, urgent: bool = False) -> asyncio.Task[Vector]:
    """Start one embedding (in the lookups' line if `urgent`) and hold the model inside it."""
    model.gate.clear()
    first = asyncio.create_task(queue.embed("first", urgent=urgent))
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    return first


def test_a_text_on_a_quiet_process_is_embedded_at_once() -> None:
    model = Model()
    vector = asyncio.run(asyncio.wait_for(EmbedQueue(model).embed("abc", urgent=True), WAIT_S))
    assert model.calls == [["abc"]]
    assert vector[0] == 3


def test_each_line_embeds_in_turn_one_call_at_a_time() -> None:
    async def go() -> tuple[Model, list[Vector]]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        adds = [asyncio.create_task(queue.embed("a" * n, urgent=False)) for n in (1, 2)]
        looks = [asyncio.create_task(queue.embed("b" * n, urgent=True)) for n in (3, 4)]
        await asyncio.sleep(0)  # all four are queued
        model.gate.set()
        vectors = await asyncio.wait_for(asyncio.gather(first, *adds, *looks), WAIT_S)
        return model, vectors

    model, vectors = asyncio.run(go())
    assert model.order("first", "a", "aa") == ["first", "a", "aa"]
    assert model.order("bbb", "bbbb") == ["bbb", "bbbb"]
    assert len(model.calls) == 5
    assert model.most_inside <= 2  # a lookup beside the background at most
    assert [v[0] for v in vectors] == [5, 1, 2, 3, 4]


def test_a_lookup_does_not_wait_for_the_background_embedding_running() -> None:
    async def go() -> tuple[Model, Vector, bool]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        model.held = "first"  # only the background's call waits
        vector = await asyncio.wait_for(queue.embed("bb", urgent=True), WAIT_S)
        still = not first.done()
        model.gate.set()
        await asyncio.wait_for(first, WAIT_S)
        return model, vector, still

    model, vector, still = asyncio.run(go())
    assert still, "the lookup was answered while the background call was still running"
    assert vector[0] == 2
    assert model.calls == [["first"], ["bb"]]


def test_a_lookup_of_a_text_being_embedded_ahead_waits_for_that_call() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        model.gate.clear()
        queue = EmbedQueue(model)
        queue.soon("abcd")
        assert await asyncio.to_thread(model.entered.wait, WAIT_S)
        look = asyncio.create_task(queue.embed("abcd", urgent=True))
        await asyncio.sleep(0.05)
        model.gate.set()
        return model, await asyncio.wait_for(look, WAIT_S)

    model, vector = asyncio.run(go())
    assert model.calls == [["abcd"]]
    assert vector[0] == 4


def test_a_text_embedded_lately_is_not_embedded_again() -> None:
    async def go() -> Model:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        twice = [asyncio.create_task(queue.embed("same", urgent=u)) for u in (True, False)]
        await asyncio.sleep(0)
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *twice), WAIT_S)
        await queue.embed("same", urgent=False)  # the lookup's vector, reused for the add
        return model

    assert asyncio.run(go()).calls == [["first"], ["same"]]


def test_only_the_latest_texts_are_kept() -> None:
    async def go() -> Model:
        model = Model()
        queue = EmbedQueue(model)
        for i in range(RECENT + 1):
            await queue.embed(f"t{i}", urgent=False)
        await queue.embed(f"t{RECENT}", urgent=False)  # kept
        await queue.embed("t0", urgent=False)  # dropped: embedded again
        return model

    calls = asyncio.run(asyncio.wait_for(go(), WAIT_S)).calls
    assert len(calls) == RECENT + 2
    assert calls[-1] == ["t0"]


def test_a_model_failure_reaches_its_caller_only() -> None:
    async def go() -> tuple[BaseException | Vector, ...]:
        model = Model(fail_on="bad")
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        asked = [asyncio.create_task(queue.embed(t, urgent=False)) for t in ("bad", "ok")]
        await asyncio.sleep(0)
        model.gate.set()
        return tuple(
            await asyncio.wait_for(asyncio.gather(first, *asked, return_exceptions=True), WAIT_S)
        )

    first, bad, ok = asyncio.run(go())
    assert isinstance(bad, RuntimeError)
    assert not isinstance(first, BaseException) and first[0] == 5
    assert not isinstance(ok, BaseException) and ok[0] == 2


def test_a_cancelled_caller_text_is_not_embedded_and_the_others_are() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue, urgent=True)
        gone = asyncio.create_task(queue.embed("gone", urgent=True))
        stays = asyncio.create_task(queue.embed("stays", urgent=True))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        model.gate.set()
        await first
        return model, await asyncio.wait_for(stays, WAIT_S)

    model, vector = asyncio.run(go())
    assert model.calls == [["first"], ["stays"]]
    assert vector[0] == 5


def test_beyond_max_later_waiting_additions_the_oldest_is_dropped() -> None:
    async def go() -> tuple[Model, list[BaseException | Vector]]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        adds = [
            asyncio.create_task(queue.embed(f"add-{i}", urgent=False)) for i in range(MAX_LATER + 1)
        ]
        await asyncio.sleep(0)
        model.gate.set()
        done = await asyncio.wait_for(asyncio.gather(*adds, return_exceptions=True), WAIT_S)
        await first
        return model, done

    model, done = asyncio.run(go())
    assert isinstance(done[0], asyncio.CancelledError)  # the oldest waiting
    assert not any(isinstance(d, BaseException) for d in done[1:])
    assert ["add-0"] not in model.calls
    assert len(model.calls) == 1 + MAX_LATER


def test_texts_ahead_go_before_additions_beside_the_lookups_and_are_kept() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        queue.soon("aa")
        queue.soon("aa")  # twice: embedded once, then kept
        add = asyncio.create_task(queue.embed("ccc", urgent=False))
        look = asyncio.create_task(queue.embed("b", urgent=True))
        await asyncio.sleep(0)  # both are queued
        model.gate.set()
        await asyncio.wait_for(asyncio.gather(first, add, look), WAIT_S)
        return model, await asyncio.wait_for(queue.embed("aa", urgent=True), WAIT_S)

    model, vector = asyncio.run(go())
    assert model.order("first", "aa", "ccc") == ["first", "aa", "ccc"]
    assert len(model.calls) == 4
    assert vector[0] == 2


def test_at_most_max_ahead_texts_wait_to_be_embedded_ahead() -> None:
    async def go() -> Model:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        for n in range(1, MAX_AHEAD + 3):
            queue.soon("s" * n)
        model.gate.set()
        await first
        # An addition goes after every text ahead: once it is embedded, so are they.
        await asyncio.wait_for(queue.embed("z", urgent=False), WAIT_S)
        return model

    model = asyncio.run(go())
    assert model.calls[1:] == [["s" * n] for n in range(1, MAX_AHEAD + 1)] + [["z"]]


def test_a_failure_ahead_is_left_to_the_lookup_and_the_queue_goes_on() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model(fail_on="abc")
        queue = EmbedQueue(model)
        queue.soon("abc")  # fails, with nobody waiting
        await asyncio.wait_for(queue.embed("next", urgent=False), WAIT_S)
        model.fail_on = None
        return model, await asyncio.wait_for(queue.embed("abc", urgent=True), WAIT_S)

    model, vector = asyncio.run(go())
    assert model.calls == [["abc"], ["next"], ["abc"]]
    assert vector[0] == 3
