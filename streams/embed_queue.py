"""Embeddings for many async callers: one text at a time, lookups first, recent ones kept.

One model call runs at a time, in a thread, so a burst of questions never takes more than
one core from the engine and the requests behind it. A lookup waits at most for the call
already running: it goes before every addition waiting, since an answer waits on a lookup
and nobody on an addition. Texts are embedded one per call: batching questions of different
lengths pads them to the longest, which on a CPU costs more than it saves (measured in
docs/semantic-cache.md). The vectors of the latest texts are kept, so a question looked up
at admission is not embedded again when its answer is added.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from streams.semantic_index import Vector

RECENT = 1_024
"""Vectors of the latest distinct texts kept for reuse (1.5 KB each)."""


class TextEmbedder(Protocol):
    """Turns texts into unit vectors (streams.embedder.Embedder in production)."""

    @property
    def dimensions(self) -> int: ...

    def embed(self, texts: list[str]) -> Vector: ...


@dataclass
class _Wanted:
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

    async def embed(self, text: str, *, urgent: bool) -> Vector:
        """The unit vector of `text`; `urgent` ones (lookups) are embedded first."""
        vector = self._kept(text)
        if vector is not None:
            return vector
        wanted = _Wanted(text)
        (self._urgent if urgent else self._later).append(wanted)
        if self._running is None:
            self._running = asyncio.create_task(self._run())
        return await asyncio.shield(wanted.done)  # a cancelled caller leaves the queue be

    async def _run(self) -> None:
        """Embed what is wanted, urgent first, until nothing is."""
        wanted: _Wanted | None = None
        try:
            while self._urgent or self._later:
                wanted = (self._urgent or self._later).popleft()
                if not wanted.done.done():
                    await self._embed(wanted)
        finally:
            self._running = None
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
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
        return vector
