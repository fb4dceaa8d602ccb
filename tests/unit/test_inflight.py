"""InFlight: engine steps folded into a Completion, a failure, and a metering event."""

from __future__ import annotations

import time
from typing import Any

import pytest

from schemas.catalog import Catalog, ModelSpec
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.request import InferenceRequest
from schemas.result import TokenLogprob
from schemas.route import Route
from schemas.work import WorkItem
from workers.engine import EngineStep
from workers.inflight import InFlight

ADMITTED = 1_000.0
STARTED = 1_000.5
NOW = 1_002.0


def _work(**body: Any) -> WorkItem:
    request = InferenceRequest.model_validate(
        {
            "correlation_id": "req-1",
            "tenant": "acme",
            "lane": "batch",
            "body": {"messages": [{"role": "user", "content": "Hi"}], **body},
        }
    )
    return WorkItem(
        request=request,
        model="smollm2-135m",
        fingerprint="ab" * 32,
        route=Route(requested="smollm2-135m", chain=["smollm2-135m"]),
        admitted_at=ADMITTED,
    )


def _steps() -> list[EngineStep]:
    return [
        EngineStep(
            "Hel", 1, 5, logprobs=[TokenLogprob(token="Hel", logprob=-0.5)], cached_tokens=4
        ),
        EngineStep("lo", 1, 5, logprobs=[TokenLogprob(token="lo", logprob=-0.25)]),
        EngineStep(
            "!",
            1,
            5,
            finished=True,
            finish_reason="length",
            logprobs=[TokenLogprob(token="!", logprob=-1.0)],
        ),
    ]


def _fed(**body: Any) -> InFlight:
    state = InFlight(work=_work(**body), request_id="req-1@t/0/0", started_at=STARTED)
    for step in _steps():
        state.add(step)
    return state


def test_steps_fold_into_one_answer() -> None:
    completion = _fed().completion("w1", NOW)
    assert completion.error is None
    assert completion.worker == "w1"
    assert completion.finished_at == NOW
    response = completion.response
    assert response is not None
    assert response.id == "chatcmpl-req-1"
    assert response.model == "smollm2-135m"
    assert response.created == int(NOW)
    [choice] = response.choices
    assert choice.message.role == "assistant"
    assert choice.message.content == "Hello!"
    assert choice.finish_reason == "length"
    assert choice.logprobs is None  # not asked for, even though the engine sent some
    assert response.usage.model_dump() == {
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 4},  # as the engine said at its first step
    }


def test_logprobs_are_kept_when_requested() -> None:
    response = _fed(logprobs=True).completion("w1", NOW).response
    assert response is not None
    logprobs = response.choices[0].logprobs
    assert logprobs is not None
    assert [(t.token, t.logprob) for t in logprobs.content] == [
        ("Hel", -0.5),
        ("lo", -0.25),
        ("!", -1.0),
    ]


def test_finish_reason_only_from_the_finished_step() -> None:
    state = InFlight(work=_work(), request_id="r", started_at=STARTED)
    state.add(EngineStep("a", 1, 5, finish_reason="ignored"))
    assert state.finish_reason is None
    state.add(EngineStep("", 0, 5, finished=True, finish_reason="stop"))
    assert state.finish_reason == "stop"


def test_prompt_tokens_are_the_engines_latest_count_not_a_sum() -> None:
    state = InFlight(work=_work(), request_id="r", started_at=STARTED)
    state.add(EngineStep("a", 2, 7))
    state.add(EngineStep("b", 3, 7))
    assert (state.prompt_tokens, state.completion_tokens) == (7, 5)


def test_first_token_time_is_set_by_the_first_step_with_tokens() -> None:
    state = InFlight(work=_work(), request_id="r", started_at=time.time())
    state.add(EngineStep("", 0, 5))
    assert state.first_token_at is None
    assert state.timings(time.time()).ttft_ms is None
    before = time.time()
    state.add(EngineStep("x", 1, 5))
    first = state.first_token_at
    assert first is not None
    assert before <= first <= time.time()
    state.add(EngineStep("y", 1, 5))
    assert state.first_token_at == first
    ttft_ms = state.timings(time.time()).ttft_ms
    assert ttft_ms is not None
    assert ttft_ms == pytest.approx((first - state.started_at) * 1000)


def test_timings_from_admission_start_and_now() -> None:
    state = _fed()
    state.first_token_at = STARTED + 0.1
    timings = state.timings(NOW)
    assert timings.queue_ms == pytest.approx(500.0)
    assert timings.ttft_ms == pytest.approx(100.0)
    assert timings.engine_ms == pytest.approx(1_500.0)
    assert timings.total_ms is None


def test_queue_time_is_never_negative() -> None:
    state = InFlight(work=_work(), request_id="r", started_at=ADMITTED - 1)
    assert state.timings(NOW).queue_ms == 0.0


def test_from_work_starts_the_clock_now() -> None:
    before = time.time()
    state = InFlight.from_work(_work(), "rid")
    assert before <= state.started_at <= time.time()
    assert state.request_id == "rid"
    assert state.text == []
    assert state.completion_tokens == 0


def test_failure_is_an_error_completion() -> None:
    state = _fed()
    completion = state.failure(LlmqError(ErrorCode.ENGINE_ERROR, "boom"), "w2", NOW)
    assert completion.response is None
    assert completion.error is not None
    assert completion.error.code is ErrorCode.ENGINE_ERROR
    assert completion.error.message == "boom"
    assert completion.error.retriable
    assert completion.worker == "w2"
    assert completion.work == state.work
    assert completion.timings.engine_ms == pytest.approx(1_500.0)
    assert not completion.engine_retried


def test_a_failure_the_engine_retried_says_so() -> None:
    error = LlmqError(ErrorCode.ENGINE_ERROR, "boom", retried=True)
    assert _fed().failure(error, "w2", NOW).engine_retried


def test_metering_prices_the_tokens_with_the_model_spec() -> None:
    spec = Catalog.builtin().models[0]
    state = _fed()
    state.first_token_at = STARTED + 0.1
    event = state.metering(spec, "w1", NOW)
    assert event.cost_usd == pytest.approx((5 * 0.02 + 3 * 0.08) / 1e6)
    assert event.cost_usd == pytest.approx(spec.cost(5, 3))
    assert (event.prompt_tokens, event.completion_tokens) == (5, 3)
    assert (event.correlation_id, event.tenant, event.model) == ("req-1", "acme", spec.name)
    assert event.lane is Lane.BATCH
    assert event.fingerprint == "ab" * 32
    assert event.worker == "w1"
    assert event.at == NOW
    assert event.queue_ms == pytest.approx(500.0)
    assert event.ttft_ms == pytest.approx(100.0)
    assert event.engine_ms == pytest.approx(1_500.0)


def test_metering_of_a_free_model_costs_nothing() -> None:
    event = _fed().metering(ModelSpec(name="free", source="s"), "w1", NOW)
    assert event.cost_usd == 0.0
    assert event.model == "free"


def test_the_mean_logprob_is_set_whenever_the_engine_sent_logprobs() -> None:
    completion = _fed().completion("w1", NOW)
    assert completion.mean_logprob == pytest.approx((-0.5 - 0.25 - 1.0) / 3)


def test_no_logprobs_no_mean() -> None:
    state = InFlight(work=_work(), request_id="r", started_at=STARTED)
    state.add(EngineStep("a", 1, 5, finished=True, finish_reason="stop"))
    assert state.completion("w1", NOW).mean_logprob is None
    assert state.failure(LlmqError(ErrorCode.ENGINE_ERROR, "x"), "w1", NOW).mean_logprob is None


@pytest.mark.parametrize(
    ("uncompressed", "saved"),
    [(None, 0), (12, 7), (5, 0), (3, 0)],
    ids=["unknown", "compressed", "no-gain", "compression-grew-it"],
)
def test_metering_reports_the_prompt_tokens_compression_saved(
    uncompressed: int | None, saved: int
) -> None:
    state = _fed()
    state.uncompressed_prompt_tokens = uncompressed
    event = state.metering(ModelSpec(name="m", source="s"), "w1", NOW)
    assert event.prompt_tokens == 5
    assert event.prompt_tokens_saved == saved
