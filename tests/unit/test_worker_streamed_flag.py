"""A streamed generation that fails says whether it sent pieces (Completion.streamed): once
one went out, its client may have shown it, and the stream processor takes it over only
with the same answer (test_stream_restarts); before, any generation may answer for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from schemas.errors import ErrorCode, LlmqError
from schemas.request import ChatBody
from tests.unit.worker_fakes import PROMPT_TOKENS, FakeEngine, serve_one, work
from workers.engine import EngineStep

pytestmark = pytest.mark.timeout(30)


class FailsAfter(FakeEngine):
    """Fails (ENGINE_ERROR) after `steps` steps of a token each."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps

    async def generate(
        self,
        request_id: str,
        body: ChatBody,
        priority: int,
        tenant: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[EngineStep]:
        for _ in range(self.steps):
            yield EngineStep(self.text, 1, PROMPT_TOKENS)
        raise LlmqError(ErrorCode.ENGINE_ERROR, "the engine failed")


@pytest.mark.parametrize("steps", [0, 1], ids=["before-its-first-piece", "after-one-piece"])
def test_a_failed_generation_says_it_streamed_once_a_piece_went_out(steps: int) -> None:
    """Said streamed with no piece sent, a retry's different answer ended its client's
    stream for nothing; said not streamed after one, a different answer went on from it."""
    producer = serve_one(work(stream=True), FailsAfter(steps))
    [failed] = producer.completions()
    assert failed.error is not None and failed.error.code is ErrorCode.ENGINE_ERROR
    assert [delta.seq for delta in producer.deltas()] == list(range(steps))
    assert failed.streamed is (steps > 0)
