"""VllmEngine's reading of vLLM's outcomes, on a stand-in for AsyncLLM (no engine starts):
a finish vLLM gave up on, and each kind of exception, become the failure that says whether to
retry; only a dead engine stops the worker. Also the worker process's line when it does."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from llmq import startup
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.request import ChatBody, ChatMessage
from schemas.work import Completion
from tests.unit.worker_fakes import (
    STANDARD,
    FakeConsumer,
    FakeProducer,
    MemoryStarts,
    model_spec,
    work,
)
from workers import __main__ as worker_process
from workers.worker import Worker

with warnings.catch_warnings():  # vLLM warns as it loads
    warnings.simplefilter("ignore", DeprecationWarning)
    from vllm.exceptions import QueueOverflowError, VLLMNotFoundError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    from workers.vllm_engine import VllmEngine

pytestmark = pytest.mark.timeout(60)

REMOTE = Path(__file__).resolve().parents[2] / "examples" / "models-remote.toml"
BODY = ChatBody(messages=[ChatMessage(role="user", content="hi")])


@dataclass
class _Choice:
    text: str
    finish_reason: str | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: None = None


@dataclass
class _Output:
    """What the worker reads of vLLM's RequestOutput."""

    outputs: list[_Choice]
    finished: bool
    num_cached_tokens: int = 0


class _AsyncLLM:
    """Yields `outputs`, then raises `error` (raised from `cause`), if any."""

    def __init__(
        self,
        outputs: list[_Output],
        error: Exception | None = None,
        cause: Exception | None = None,
    ) -> None:
        self.outputs, self.error, self.cause = outputs, error, cause

    async def generate(
        self, prompt: Any, params: Any, request_id: str, priority: int = 0
    ) -> AsyncIterator[_Output]:
        for out in self.outputs:
            yield out
        if self.error is not None:
            raise self.error from self.cause


class _Tokenizer:
    def apply_chat_template(self, *args: Any, **kwargs: Any) -> list[int]:
        return [1, 2, 3]


def _engine(stand_in: _AsyncLLM) -> VllmEngine:
    engine = VllmEngine.__new__(VllmEngine)  # no engine started
    engine._spec, engine._shared_prefixes = model_spec(), False
    engine._tokenizer, engine._engine = cast(Any, _Tokenizer()), cast(Any, stand_in)
    engine._tokenizing, engine._running = ThreadPoolExecutor(1), set()
    return engine


def _outcome(stand_in: _AsyncLLM) -> LlmqError | None:
    """The error the engine's generation ends in, if any."""

    async def run() -> LlmqError | None:
        try:
            async for _ in _engine(stand_in).generate("r1", BODY, priority=0):
                pass
        except LlmqError as error:
            return error
        return None

    return asyncio.run(run())


@pytest.mark.parametrize("reason", ["error", "abort"])
def test_a_generation_vllm_gave_up_on_fails_retriably_not_as_an_empty_answer(
    reason: str,
) -> None:
    """Its finish reason "error": its input or KV cache failed; "abort": the engine shut
    down or paused."""
    error = _outcome(_AsyncLLM([_Output([_Choice("", reason)], finished=True)]))
    assert error is not None
    assert (error.code, error.retriable) == (ErrorCode.ENGINE_ERROR, True)
    assert repr(reason) in error.message


def test_a_finished_answer_is_no_failure() -> None:
    assert _outcome(_AsyncLLM([_Output([_Choice("hi", "stop", [7])], finished=True)])) is None


def _failed(error: Exception, cause: Exception | None = None) -> LlmqError:
    outcome = _outcome(_AsyncLLM([_Output([_Choice("a", None, [7])], False)], error, cause))
    assert outcome is not None
    return outcome


def test_a_per_request_failure_vllm_wraps_fails_retriably_naming_its_cause() -> None:
    error = _failed(EngineGenerateError(), KeyError("lost"))
    assert (error.code, error.retriable) == (ErrorCode.ENGINE_ERROR, True)
    assert "EngineGenerateError" in error.message and "KeyError: 'lost'" in error.message


def test_an_overloaded_engine_fails_retriably() -> None:
    error = _failed(QueueOverflowError())  # type: ignore[no-untyped-call]
    assert (error.code, error.retriable) == (ErrorCode.ENGINE_ERROR, True)


def test_what_vllm_blames_on_the_request_is_an_invalid_request() -> None:
    error = _failed(VLLMNotFoundError("no such adapter"))
    assert (error.code, error.retriable) == (ErrorCode.INVALID_REQUEST, False)


def test_a_dead_engine_is_still_engine_unavailable() -> None:
    assert _failed(EngineDeadError()).code is ErrorCode.ENGINE_UNAVAILABLE


def test_the_worker_answers_a_wrapped_failure_and_serves_on() -> None:
    """It stopped the worker before: its start stayed counted, and after three restarts a
    healthy request was dead-lettered as a crash loop."""
    stand_in = _AsyncLLM([], EngineGenerateError(), KeyError("lost"))
    consumer, producer, starts = FakeConsumer(), FakeProducer(), MemoryStarts()
    consumer.add(STANDARD, [work(Lane.STANDARD, 0)])

    async def main() -> None:
        stop = asyncio.Event()
        worker = Worker(
            model_spec(), _engine(stand_in), cast(Any, consumer), cast(Any, producer),
            worker_id="w", commit_interval_s=0.01, starts=starts, max_starts=3,
        )  # fmt: skip
        running = asyncio.create_task(worker.run(stop))
        async with asyncio.timeout(10):
            while consumer.committed.get(STANDARD) != 1:  # noqa: ASYNC110 -- the fakes' state
                await asyncio.sleep(0.002)
        stop.set()
        await running

    asyncio.run(main())
    completions: list[Completion] = producer.completions()
    assert len(completions) == 1 and completions[0].error is not None
    assert completions[0].error.code is ErrorCode.ENGINE_ERROR
    assert starts.counts == {}


def test_a_dead_engine_stops_the_worker_process_with_one_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not a traceback; the exit status stays non-zero, so the worker is restarted."""
    dead = LlmqError(ErrorCode.ENGINE_UNAVAILABLE, "the vLLM engine died: gone")

    async def serve(*args: Any) -> None:
        raise dead

    monkeypatch.setenv("LLMQ_MODELS_FILE", str(REMOTE))  # its model starts no vLLM
    monkeypatch.setenv("LLMQ_MODEL", "remote-large")
    monkeypatch.setenv("REMOTE_LLM_API_KEY", "k")
    monkeypatch.setattr(worker_process, "serve", serve)
    monkeypatch.setattr(startup, "serve_metrics", _nothing)
    monkeypatch.setattr(startup, "reach_kafka", _limits)
    assert worker_process.main() == startup.UNREACHABLE
    assert f"the worker stopped: {dead}" in caplog.text


def _nothing(*args: Any) -> None:
    """No metrics port opened."""


def _limits(*args: Any, limits_of: tuple[str, ...], **kwargs: Any) -> dict[str, int]:
    """Kafka's record limits, as if it answered."""
    return dict.fromkeys(limits_of, 1_000_000)
