"""What an answer served without a generation saved, as its metering event says."""

from __future__ import annotations

import pytest

from schemas.catalog import Catalog
from schemas.lanes import Lane
from schemas.result import CacheStatus, InferenceResult
from streams.savings import saved
from tests.unit.stages import answer


def _result(cache: CacheStatus, model: str = "smollm2-135m") -> InferenceResult:
    return InferenceResult(
        correlation_id="c-1",
        tenant="acme",
        status="ok",
        model_used=model,
        cache=cache,
        lane=Lane.BATCH,
        response=answer("Paris."),
        finished_at=1_000.0,
    )


@pytest.mark.parametrize("cache", [CacheStatus.EXACT, CacheStatus.SEMANTIC, CacheStatus.COALESCED])
def test_a_cached_or_coalesced_answer_saves_what_its_generation_cost(cache: CacheStatus) -> None:
    event = saved(_result(cache), Catalog.builtin())
    assert event is not None
    spec = Catalog.builtin().models[0]
    assert event.saved_usd == pytest.approx(spec.cost(3, 1))  # the answer's usage
    assert (event.cost_usd, event.prompt_tokens, event.completion_tokens) == (0.0, 0, 0)
    assert (event.cache, event.lane, event.tenant, event.at) == (cache, Lane.BATCH, "acme", 1000.0)


def test_a_generated_answer_or_an_error_is_metered_by_its_worker_not_here() -> None:
    assert saved(_result(CacheStatus.NONE), Catalog.builtin()) is None
    error = _result(CacheStatus.EXACT).model_copy(update={"response": None, "status": "error"})
    assert saved(error, Catalog.builtin()) is None


def test_a_model_no_longer_in_the_catalog_saved_nothing_we_can_price() -> None:
    event = saved(_result(CacheStatus.EXACT, model="retired"), Catalog.builtin())
    assert event is not None and event.saved_usd == 0.0 and event.model == "retired"


def test_an_answer_served_again_after_redis_was_away_is_one_saving() -> None:
    """With Redis away the result store cannot say which answer came first: a redelivery
    answers anew, at another time, and its saving was counted twice."""
    first = _result(CacheStatus.EXACT)
    again = first.model_copy(update={"finished_at": first.finished_at + 5})
    events = [saved(r, Catalog.builtin()) for r in (first, again)]
    assert events[0] is not None and events[1] is not None
    assert events[0].event_id == events[1].event_id
    other = saved(first.model_copy(update={"tenant": "other"}), Catalog.builtin())
    assert other is not None and other.event_id != events[0].event_id
