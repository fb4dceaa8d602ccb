"""Embeddings for many async callers: lookups never wait behind the background, recent
vectors kept.

Two lines, each one model call at a time, in a thread. Lookups have a line of their own (an
answer waits on a lookup): a lookup waits only for the lookups before it, never for a
background embedding already running (docs/semantic-cache.md measures what that saves).
The background line embeds texts a lookup is expected for soon (`soon`: started at
admission, so the embedding overlaps the request's trip to its lookup), then additions
(nobody waits on them): a burst of questions embeds on at most two cores, one of them for
lookups. Texts ahead and additions wait in bounded queues (a text not embedded ahead is
embedded by its lookup; a lost addition costs only a future hit). A text being embedded is
not embedded again meanwhile: its other callers wait for that call, and see its failure.
A caller that gives up (a lookup's timeout) takes its text out of its line at once, so the
lines hold only texts someone still waits for, however long a model call hangs; a lookup
whose caller gives up while the lookups' line embeds it makes the queue `stuck` until that
call returns, so that the next lookups need not queue behind it (the semantic cache takes
them for misses meanwhile).
The vectors of the latest texts are kept, so a question embedded ahead or looked up is not
embedded again by its lookup or when its answer is added. Texts are embedded one per call:
batching questions of different lengths pads them to the longest, which on a CPU costs
more than it saves (docs/semantic-cache.md).
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


@dataclass(eq=False)  # the very entry is taken out of its line, not an equal one
class _Wanted:
    """A text and the future its caller awaits."""

    text: str
    done: asyncio.Future[Vector] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class EmbedQueue:
    """Embeds the texts of concurrent callers with `embedder.embed`: lookups in a line of
    their own, texts ahead and additions in another, one call at a time in each."""

    def __init__(self, embedder: TextEmbedder) -> None:
        self._embedder = embedder
        self._urgent: deque[_Wanted] = deque()
        self._ahead: deque[str] = deque()
        self._later: deque[_Wanted] = deque()
        self._lookups: asyncio.Task[None] | None = None
        self._background: asyncio.Task[None] | None = None
        self._embedding: dict[str, asyncio.Future[Vector]] = {}
        self._recent: OrderedDict[str, Vector] = OrderedDict()
        self._answering: _Wanted | None = None
        """The lookup whose text the lookups' line embeds now."""
        self._given_up: _Wanted | None = None
        """The lookup last given up on by its caller while the lookups' line embedded it."""

    @property
    def stuck(self) -> bool:
        """Whether the caller of the lookup the lookups' line embeds now gave up waiting for
        it: a lookup now would wait behind a call that may never return. (One that gave up
        while it waited behind another call says nothing of that call.)"""
        return self._answering is not None and self._answering is self._given_up

    async def embed(self, text: str, *, urgent: bool) -> Vector:
        """The unit vector of `text`; `urgent` ones (lookups) never wait behind the others."""
        vector = self._kept(text)
        if vector is not None:
            return vector
        running = self._embedding.get(text)
        if running is not None:  # embedded right now (ahead, say): wait for that call
            return await asyncio.shield(running)
        wanted = _Wanted(text)
        line = self._urgent if urgent else self._later
        line.append(wanted)
        if len(self._later) > MAX_LATER:
            self._later.popleft().done.cancel()
        self._start()
        try:
            return await wanted.done
        except asyncio.CancelledError:
            # Its caller gave up (or the line stopped): out of the line now, not when the line
            # comes to it, which a hung model call may never let it do.
            with contextlib.suppress(ValueError):
                line.remove(wanted)
            if wanted is self._answering:  # not one that waited behind a slow call
                self._given_up = wanted
            raise

    def soon(self, text: str) -> None:
        """Embed `text` in the background, for a lookup expected soon (its vector is kept
        for it); nobody waits for it, and a failure is the lookup's to see."""
        if len(self._ahead) < MAX_AHEAD and self._kept(text) is None:
            self._ahead.append(text)
            self._start()

    def _start(self) -> None:
        if self._urgent and (self._lookups is None or self._lookups.done()):
            self._lookups = asyncio.create_task(self._run_lookups())
        if (self._ahead or self._later) and (self._background is None or self._background.done()):
            self._background = asyncio.create_task(self._run_background())

    async def _run_lookups(self) -> None:
        """Embed the lookups, in turn, until none waits."""
        wanted: _Wanted | None = None
        try:
            while self._urgent:
                wanted = self._urgent.popleft()
                if not wanted.done.done():  # cancelled, its caller not yet back to leave
                    self._answering = wanted
                    await self._answer(wanted)
        finally:
            self._answering = None
            self._stopped(wanted, self._urgent)

    async def _run_background(self) -> None:
        """Embed the texts ahead, then the additions, until none waits."""
        wanted: _Wanted | None = None
        try:
            while self._ahead or self._later:
                if self._ahead:
                    wanted = None
                    # A lookup waiting on this call sees the failure; a later one tries again.
                    with contextlib.suppress(Exception):
                        await self._vector(self._ahead.popleft())
                else:
                    wanted = self._later.popleft()
                    if not wanted.done.done():
                        await self._answer(wanted)
        finally:
            self._ahead.clear()
            self._stopped(wanted, self._later)

    @staticmethod
    def _stopped(wanted: _Wanted | None, waiting: deque[_Wanted]) -> None:
        """A line stopped (the process is shutting down): nobody may wait for ever."""
        for left in (*([wanted] if wanted else []), *waiting):
            left.done.cancel()
        waiting.clear()

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
        """The text's vector: kept, from the call embedding it now, or from the model (then
        kept)."""
        vector = self._kept(text)
        if vector is not None:
            return vector
        running = self._embedding.get(text)
        if running is not None:
            return await asyncio.shield(running)
        done: asyncio.Future[Vector] = asyncio.get_running_loop().create_future()
        self._embedding[text] = done
        try:
            fresh: Vector = (await asyncio.to_thread(self._embedder.embed, [text]))[0]
            self._recent[text] = fresh
            while len(self._recent) > RECENT:
                self._recent.popitem(last=False)
            done.set_result(fresh)
        except Exception as exc:
            done.set_exception(exc)
            done.exception()  # marked seen: it is raised here, and to any caller waiting on it
            raise
        finally:
            del self._embedding[text]
            if not done.done():
                done.cancel()  # the line was stopped
        return fresh

    def _kept(self, text: str) -> Vector | None:
        """The text's vector if it is among the latest embedded, marked as used."""
        vector = self._recent.get(text)
        if vector is not None:
            self._recent.move_to_end(text)
        return vector
