"""Following a streamed answer: the token deltas as they come, completed by the final result."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.errors import ErrorCode, LlmqError
from schemas.result import InferenceResult, TokenLogprob, Usage
from schemas.stream import TokenDelta


@dataclass(frozen=True)
class Delta:
    """The next piece of an answer, as an app reads it."""

    text: str
    offset: int
    """Characters of the answer before this piece: a reader that lost the stream resumes at
    `offset + len(text)`."""
    finish_reason: str | None = None
    """On the last piece only."""
    usage: Usage | None = None
    """On the last piece only."""
    model: str | None = None
    logprobs: list[TokenLogprob] | None = None
    """This piece's tokens' log-probabilities, when the request asked for them (none on a
    piece that starts inside a token: a stream resumed at a character offset)."""


@dataclass
class _Restart:
    """Another generation of the answer, read from its start: its text so far."""

    text: str = ""
    next_seq: int = 0


class StreamReader:
    """Turns one generation's deltas, then the final result, into the pieces an app has not
    had yet. It follows the first generation it sees from its start (seq 0) and takes its
    records in order; repeats are left out, and whatever the records did not bring, the
    final result does. `offset` characters were delivered before (a resumed stream).

    A generation started over after a failure (another id) is left out while it says what
    was streamed (a deterministic request); once it says otherwise, the stream ends at once
    in an error, as its answer would not start with what was shown. So does a resumed
    reader's that began inside one generation and then sees another start: its client's
    characters may be the first one's, which it cannot compare."""

    def __init__(self, offset: int = 0) -> None:
        self.sent = offset
        self.streamed = ""
        self.generation: str | None = None
        self.next_seq = 0
        self.done = False
        self._model: str | None = None
        self._entries = 0
        """Logprobs entries of the records taken: the final result's after them are new."""
        self._restarts: dict[str, _Restart] = {}
        """The other generations read from their start, after the one followed."""
        self._midway: set[str] = set()
        """Generations first seen after their start, before one was followed."""

    def take(self, delta: TokenDelta) -> Delta | None:
        """The piece one record adds, or None (a repeat, a gap, another generation's);
        LlmqError when another generation shows that the answer differs from the stream."""
        if self.generation is None and delta.seq == 0:
            if self.sent and self._midway - {delta.generation}:
                raise _again("the part already streamed may be the first one's")
            self.generation = delta.generation
        if delta.generation != self.generation:
            self._compare(delta)
            return None
        if delta.seq != self.next_seq:
            return None
        self.next_seq += 1
        self._model = delta.model or self._model
        before = len(self.streamed)
        whole = self.sent == before  # the piece is the record's whole text
        self.streamed += delta.text
        self._entries += len(delta.logprobs or ())
        piece = self.streamed[max(self.sent, before) :]
        offset = self.sent
        self.sent = max(self.sent, len(self.streamed))
        if delta.finish_reason is not None:
            self.done = True
        logprobs = delta.logprobs if whole else _after(delta.logprobs, delta.text, len(piece))
        if not piece and not logprobs and delta.finish_reason is None:
            return None
        return Delta(piece, offset, delta.finish_reason, delta.usage, self._model, logprobs)

    def _compare(self, delta: TokenDelta) -> None:
        """Another generation's record: noted before one is followed; after, a restart's
        text so far is compared with what was streamed."""
        if self.generation is None:
            self._midway.add(delta.generation)
            return
        if delta.seq == 0:
            self._restarts.setdefault(delta.generation, _Restart())
        restart = self._restarts.get(delta.generation)
        if restart is None or delta.seq != restart.next_seq:
            return  # begun before this reader, a repeat or a gap: nothing to compare
        restart.next_seq += 1
        restart.text += delta.text
        if not (self.streamed.startswith(restart.text) or restart.text.startswith(self.streamed)):
            raise _again("differs from the part already streamed")

    def finish(self, result: InferenceResult) -> Delta:
        """The last piece, from the final result: the rest of the answer. An error result
        raises it as an LlmqError; so does an answer that differs from what was streamed
        (generated again, sampled differently, after a failure)."""
        if result.error is not None or result.response is None:
            error = result.error
            raise LlmqError(
                error.code if error else ErrorCode.INTERNAL_ERROR,
                error.message if error else "the result has neither an answer nor an error",
                error.retry_after_s if error else None,
            )
        text = result.text or ""
        if not text.startswith(self.streamed):
            raise _again("differs from the part already streamed")
        choice = result.response.choices[0] if result.response.choices else None
        logprobs = None
        if choice is not None and choice.logprobs is not None:
            entries = choice.logprobs.content
            if self.sent == len(self.streamed):  # the rest starts after the records taken
                logprobs = entries[self._entries :]
            else:  # a resumed stream: the rest starts at a character offset
                logprobs = _after(entries, text, len(text) - self.sent)
        piece = Delta(
            text[self.sent :],
            self.sent,
            (choice.finish_reason if choice else None) or "stop",
            result.response.usage,
            result.model_used or result.response.model,
            logprobs,
        )
        self.sent = max(self.sent, len(text))
        self.done = True
        return piece


def _again(why: str) -> LlmqError:
    """A stream that cannot go on: its answer was generated again after a failure."""
    return LlmqError(
        ErrorCode.ENGINE_ERROR,
        f"the answer was generated again after a failure and {why}; ask again",
    )


def _after(entries: list[TokenLogprob] | None, text: str, rest: int) -> list[TokenLogprob] | None:
    """The entries of the last `rest` characters of `text`, when its tokens spell it and
    those characters start at a token; None otherwise (a cut inside a token)."""
    if entries is None or "".join(e.token for e in entries) != text:
        return None
    chars = len(text) - rest
    for i, entry in enumerate(entries):
        if chars == 0:
            return entries[i:]
        chars -= len(entry.token)
    return [] if chars == 0 else None
