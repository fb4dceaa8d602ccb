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
        self.lock = threading.Lock()
        self.now: set[str] = set()
        self.together: list[frozenset[str]] = []
        """The texts inside the model as each call entered."""

    def embed(self, texts: list[str]) -> Vector:
        with self.lock:
            self.calls.append(list(texts))
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.now.update(texts)
            self.together.append(frozenset(self.now))
        self.entered.set()
        try:
            if self.held is None or self.held in texts:
                assert self.gate.wait(WAIT_S)
            if self.fail_on in texts:
                raise RuntimeError("model broke")
            return np.asarray([[len(t), 0.0, 0.0, 0.0] for t in texts], dtype=np.float32)
        finally:
            with self.lock:
                self.inside -= 1
                self.now.difference_update(texts)

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
    for inside in model.together:  # one call of each line at a time
        assert len(inside & {"first", "a", "aa"}) <= 1 and len(inside & {"bbb", "bbbb"}) <= 1
    assert [v[0] for v in vectors] == [5, 1, 2, 3, 4]


def test_a_lookup_does_not_wait_for_the_background_embedding_running() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        queue = EmbedQueue(model)
        first = await _busy(model, queue)
        model.held = "first"  # only the background's call waits, until the lookup is done
        vector = await asyncio.wait_for(queue.embed("bb", urgent=True), WAIT_S)
        model.gate.set()
        await asyncio.wait_for(first, WAIT_S)
        return model, vector

    model, vector = asyncio.run(go())
    assert vector[0] == 2
    assert model.calls == [["first"], ["bb"]]


async def _joined(model: Model, queue: EmbedQueue, text: str) -> asyncio.Task[Vector]:
    """Embed `text` ahead and hold the model inside that call; then a lookup of it, which
    finds the call running; then let the model go on."""
    model.gate.clear()
    queue.soon(text)
    assert await asyncio.to_thread(model.entered.wait, WAIT_S)
    look = asyncio.create_task(queue.embed(text, urgent=True))
    await asyncio.sleep(0)
    model.gate.set()
    return look


def test_a_lookup_of_a_text_being_embedded_ahead_waits_for_that_call() -> None:
    async def go() -> tuple[Model, Vector]:
        model = Model()
        look = await _joined(model, EmbedQueue(model), "abcd")
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


def test_a_lookup_joining_a_failing_call_ahead_sees_its_failure_and_a_later_one_retries() -> None:
    async def go() -> tuple[Model, BaseException | Vector, Vector]:
        model = Model(fail_on="abc")
        queue = EmbedQueue(model)
        look = await _joined(model, queue, "abc")
        (joined,) = await asyncio.wait_for(asyncio.gather(look, return_exceptions=True), WAIT_S)
        model.fail_on = None
        return model, joined, await asyncio.wait_for(queue.embed("abc", urgent=True), WAIT_S)

    model, joined, later = asyncio.run(go())
    assert isinstance(joined, RuntimeError)
    assert later[0] == 3
    assert model.calls == [["abc"], ["abc"]]
