"""A streamed generation that fails says whether it sent pieces (Completion.streamed): once
one went out, its client may have shown it, and the stream processor takes it over only
with the same answer (test_stream_restarts); before, any generation may answer for it."""

from __future__ import annotations

import pytest

from schemas.errors import ErrorCode, LlmqError
from tests.unit.worker_fakes import FailingEngine, serve_one, work

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("steps", [0, 1], ids=["before-its-first-piece", "after-one-piece"])
def test_a_failed_generation_says_it_streamed_once_a_piece_went_out(steps: int) -> None:
    """Said streamed with no piece sent, a retry's different answer ended its client's
    stream for nothing; said not streamed after one, a different answer went on from it."""
    producer = serve_one(
        work(stream=True),
        FailingEngine(LlmqError(ErrorCode.ENGINE_ERROR, "the engine failed"), steps),
    )
    [failed] = producer.completions()
    assert failed.error is not None and failed.error.code is ErrorCode.ENGINE_ERROR
    assert [delta.seq for delta in producer.deltas()] == list(range(steps))
    assert failed.streamed is (steps > 0)
