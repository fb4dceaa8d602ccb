"""EmbedQueue: one text per model call, one call at a time, lookups first, vectors reused."""

from __future__ import annotations

import asyncio
import gc
import threading

import numpy as np

from streams.embed_queue import MAX_LATER, MAX_SOON, RECENT, EmbedQueue
from streams.semantic_index import Vector

WAIT_S = 10.0


class Model:
    """Records each call's texts; a call blocks while `gate` is clear. A vector's first
    entry is the text's length, so a caller can tell it got its own."""

    dimensions = 4

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
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
            assert self.gate.wait(WAIT_S)
            if self.fail_on in texts:
                raise RuntimeError("model broke")
            return np.asarray([[len(t), 0.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        finally:
            self.inside -= 1


async def _busy(model: Model, queue: EmbedQueue) -> asyncio.Task[Vector]:
    """Start one embedding and hold the model inside it."""
    model.gate.clear()
    first = asyncio.create_task(queue.embed("first", urgent=False))
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    return first


def test_a_text_on_a_quiet_process_is_embedded_at_once() -> None:
    model = Model()
    vector = asyncio.run(asyncio.wait_for(EmbedQueue(model).embed("abc", urgent=True), WAIT_S))
    assert model.calls == [["abc"]]
    assert vector[0] == 3


def test_texts_asked_while_the_model_is_busy_wait_their_turn_lookups_first() -> None:
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
    assert model.calls == [["first"], ["bbb"], ["bbbb"], ["a"], ["aa"]]
    assert model.most_inside == 1
    assert [v[0] for v in vectors] == [5, 1, 2, 3, 4]


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
        first = await _busy(model, queue)
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


def test_a_text_started_soon_is_embedded_once_for_the_caller_that_asks() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        queue.soon("abc")
        queue.soon("abc")  # asked twice: still one embedding
        asking = asyncio.create_task(queue.embed("abc", urgent=True))
        await asyncio.sleep(0)
        model.gate.set()
        vector = await asyncio.wait_for(asking, WAIT_S)
        await first
        return model, vector

    model, vector = asyncio.run(go())
    assert model.calls == [["first"], ["abc"]]
    assert vector[0] == 3


def test_a_caller_leaving_does_not_stop_a_text_started_soon() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        queue.soon("abc")
        leaving = asyncio.create_task(queue.embed("abc", urgent=True))
        await asyncio.sleep(0)
        leaving.cancel()
        model.gate.set()
        await first
        return model, await asyncio.wait_for(queue.embed("abc", urgent=True), WAIT_S)

    model, vector = asyncio.run(go())
    assert model.calls == [["first"], ["abc"]]  # embedded once, then kept
    assert vector[0] == 3


def test_a_text_started_soon_that_fails_is_tried_again_for_a_caller() -> None:
    async def go() -> tuple[Model, list[dict[str, object]], Vector]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: unhandled.append(context))
        model = Model(fail_on="abc")
        queue = EmbedQueue(model)
        queue.soon("abc")  # fails, with nobody waiting
        await asyncio.wait_for(queue.embed("next", urgent=True), WAIT_S)  # queued after it
        await asyncio.sleep(0)
        model.fail_on = None
        vector = await asyncio.wait_for(queue.embed("abc", urgent=True), WAIT_S)
        gc.collect()  # a failed future is in a cycle with its traceback: collect it now
        return model, unhandled, vector

    model, unhandled, vector = asyncio.run(go())
    assert model.calls == [["abc"], ["next"], ["abc"]]
    assert vector[0] == 3
    assert unhandled == []


def test_soon_starts_no_more_than_max_soon_texts_at_once() -> None:
    async def go() -> Model:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        for n in range(1, MAX_SOON + 3):
            queue.soon("s" * n)
        model.gate.set()
        await first
        # The last one started: once it is embedded, so are the ones before it.
        await asyncio.wait_for(queue.embed("s" * MAX_SOON, urgent=True), WAIT_S)
        return model

    model = asyncio.run(asyncio.wait_for(go(), WAIT_S))
    assert len(model.calls) == MAX_SOON + 1  # "first" and MAX_SOON started ones
    assert ["s" * (MAX_SOON + 1)] not in model.calls
