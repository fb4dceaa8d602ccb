"""Embeddings for many async callers: one text at a time, lookups first, recent ones kept.

One model call runs at a time, in a thread, so a burst of questions never embeds on more
than one core. Lookups go before every addition waiting (an answer waits on a lookup,
nobody on an addition); additions wait in a bounded queue, the oldest dropped first (a lost
addition costs only a future hit). The vectors of the latest texts are kept, so a question
looked up at admission is not embedded again when its answer is added. A lookup may be
started before anyone waits for it (`soon`); a caller asking for the same text shares it.
Texts are embedded one per call: batching questions of different lengths pads them to the
longest, which on a CPU costs more than it saves (docs/semantic-cache.md).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from streams.semantic_index import Vector

RECENT = 1_024
"""Vectors of the latest distinct texts kept for reuse (1.5 KB each, and the text)."""
MAX_LATER = 1_024
"""Additions waiting at most; beyond it the oldest is dropped."""
MAX_SOON = 256
"""Texts started by soon() and not embedded yet, at most; beyond it soon() starts nothing
(the lookup embeds its text itself). Well below RECENT, so that a vector started early is
still kept when its lookup comes."""


class TextEmbedder(Protocol):
    """Turns texts into unit vectors (streams.embedder.Embedder in production)."""

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: list[str]) -> Vector: ...


@dataclass
class _Wanted:
    """A text and the future its caller awaits."""

    text: str
    done: asyncio.Future[Vector] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EmbedQueue:
    """Embeds the texts of concurrent callers with `embedder.embed`, one at a time."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self._embedder = embedder
        self._urgent: deque[_Wanted] = deque()
        self._later: deque[_Wanted] = deque()
        self._running: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, Vector] = OrderedDict()
        self._soon: dict[str, _Wanted] = {}

    async def embed(self, text: str, *, urgent: bool) -> Vector:
        """The unit vector of `text`; `urgent` ones (lookups) are embedded first."""
        vector = self._kept(text)
        if vector is not None:
            return vector
        started = self._soon.get(text)
        if started is not None:
            # Started by soon(): shared, so this caller's leaving does not cancel it.
            return await asyncio.shield(started.done)
        # A cancelled caller cancels its future, and the queue skips it.
        return await self._want(text, urgent=urgent).done

    def soon(self, text: str) -> None:
        """Start embedding `text` as a lookup that nobody waits for yet; its vector is kept
        for the caller that asks for it."""
        if len(self._soon) >= MAX_SOON or text in self._soon or self._kept(text) is not None:
            return
        wanted = self._soon[text] = self._want(text, urgent=True)
        wanted.done.add_done_callback(lambda done: self._started_done(text, done))

    def _started_done(self, text: str, done: asyncio.Future[Vector]) -> None:
        """A started text is embedded (kept now) or failed: no longer shared."""
        del self._soon[text]
        if not done.cancelled():
            done.exception()  # retrieved: a failure nobody waited for is not an error

    def _want(self, text: str, *, urgent: bool) -> _Wanted:
        """Queue `text` and make sure the queue runs."""
        wanted = _Wanted(text)
        if urgent:
            self._urgent.append(wanted)
        else:
            self._later.append(wanted)
            if len(self._later) > MAX_LATER:
                self._later.popleft().done.cancel()
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())
        return wanted

    async def _run(self) -> None:
        """Embed what is wanted, urgent first, until nothing is."""
        wanted: _Wanted | None = None
        try:
            while self._urgent or self._later:
                wanted = (self._urgent or self._later).popleft()
                if not wanted.done.done():
                    await self._embed(wanted)
        finally:
            # Stopped (the process is shutting down): nobody may wait for ever.
            for left in (*([wanted] if wanted else []), *self._urgent, *self._later):
                left.done.cancel()
            self._urgent.clear()
            self._later.clear()

    async def _embed(self, wanted: _Wanted) -> None:
        """The text's vector (kept, or from the model) or the model's failure, to its caller."""
        vector = self._kept(wanted.text)
        if vector is None:
            try:
                vector = (await asyncio.to_thread(self._embedder.embed, [wanted.text]))[0]
            except Exception as exc:
                if not wanted.done.done():
                    wanted.done.set_exception(exc)
                return
            self._recent[wanted.text] = vector
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        if not wanted.done.done():
            wanted.done.set_result(vector)

    def _kept(self, text: str) -> Vector | None:
        """The text's vector if it is among the latest embedded, marked as used."""
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
        return vector
