"""Embeddings for many async callers: one text at a time, lookups first, recent ones kept.

One model call runs at a time, in a thread, so a burst of questions never embeds on more
than one core. Lookups go first (an answer waits on a lookup), then texts a lookup is
expected for soon (`soon`: started at admission, so the embedding overlaps the request's
trip to its lookup), then additions (nobody waits on them). Texts ahead and additions wait
in bounded queues (a text not embedded ahead is embedded by its lookup; a lost addition
costs only a future hit). The vectors of the latest texts are kept, so a question embedded
ahead or looked up is not embedded again by its lookup or when its answer is added. Texts
are embedded one per call: batching questions of different lengths pads them to the
longest, which on a CPU costs more than it saves (docs/semantic-cache.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from streams.semantic_index import Vector

RECENT = 1_024
"""Vectors of the latest distinct texts kept for reuse (1.5 KB each, and the text)."""
MAX_LATER = 1_024
"""Additions waiting at most; beyond it the oldest is dropped."""
MAX_AHEAD = 256
"""Texts to embed ahead waiting at most; beyond it soon() adds none (the lookup embeds its
text itself). Well below RECENT, so that a vector embedded ahead is still kept when its
lookup comes."""


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
        self._ahead: deque[str] = deque()
        self._later: deque[_Wanted] = deque()
        self._running: asyncio.Task[None] | None = None
        self._recent: OrderedDict[str, Vector] = OrderedDict()

    async def embed(self, text: str, *, urgent: bool) -> Vector:
        """The unit vector of `text`; `urgent` ones (lookups) are embedded first."""
        vector = self._kept(text)
        if vector is not None:
            return vector
        wanted = _Wanted(text)
        if urgent:
            self._urgent.append(wanted)
        else:
            self._later.append(wanted)
            if len(self._later) > MAX_LATER:
                self._later.popleft().done.cancel()
        self._start()
        # A cancelled caller cancels its future, and the queue skips it.
        return await wanted.done

    def soon(self, text: str) -> None:
        """Embed `text` when no lookup waits, for a lookup expected soon (its vector is kept
        for it); nobody waits for it, and a failure is the lookup's to see."""
        if len(self._ahead) < MAX_AHEAD and self._kept(text) is None:
            self._ahead.append(text)
            self._start()

    def _start(self) -> None:
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run())

    async def _run(self) -> None:
        """Embed what is wanted, lookups first, then texts ahead, then additions, until
        nothing is."""
        wanted: _Wanted | None = None
        try:
            while self._urgent or self._ahead or self._later:
                if self._urgent or not self._ahead:
                    wanted = (self._urgent or self._later).popleft()
                    if not wanted.done.done():
                        await self._answer(wanted)
                else:
                    wanted = None
                    with contextlib.suppress(Exception):  # its lookup will try again
                        await self._vector(self._ahead.popleft())
        finally:
            # Stopped (the process is shutting down): nobody may wait for ever.
            for left in (*([wanted] if wanted else []), *self._urgent, *self._later):
                left.done.cancel()
            self._urgent.clear()
            self._ahead.clear()
            self._later.clear()

    async def _answer(self, wanted: _Wanted) -> None:
        """The text's vector or the model's failure, to its caller."""
        try:
            vector = await self._vector(wanted.text)
        except Exception as exc:
            if not wanted.done.done():
                wanted.done.set_exception(exc)
            return
        if not wanted.done.done():
            wanted.done.set_result(vector)

    async def _vector(self, text: str) -> Vector:
        """The text's vector, kept or from the model (then kept)."""
        vector = self._kept(text)
        if vector is None:
            vector = (await asyncio.to_thread(self._embedder.embed, [text]))[0]
            self._recent[text] = vector
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
        return vector

    def _kept(self, text: str) -> Vector | None:
        """The text's vector if it is among the latest embedded, marked as used."""
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
        return vector
