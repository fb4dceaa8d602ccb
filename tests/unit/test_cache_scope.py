"""Answers are cached under the settings of the models that give them (Catalog.cache_scope):
new weights, another context or engine arguments that change answers under the same model
name leave the answers cached before behind; prices and engine speed settings keep them."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.catalog import Catalog
from schemas.result import CacheStatus
from schemas.route import Route
from schemas.work import WorkItem
from tests.unit.stages import FakeStore, Pipeline, completion, last_attempt, raw_request, result_of

SMALL = {"name": "small", "source": "/m/small", "tier": 1, "fallback": ["spare"]}
SPARE = {"name": "spare", "source": "/m/spare", "tier": 1}
BIG = {"name": "big", "source": "/m/big", "tier": 2}


def _catalog(**changed: Any) -> Catalog:
    """small (falling back to spare) and big, with `changed` fields of the model named by
    each key: {"small": {"source": ...}}."""
    models = [{**spec, **changed.get(str(spec["name"]), {})} for spec in (SMALL, SPARE, BIG)]
    return Catalog.model_validate({"default": "small", "models": models})


def _scope(catalog: Catalog, requested: str) -> str:
    return catalog.cache_scope(Route(requested=requested, chain=["small"], cascade=True))


@pytest.mark.parametrize(
    "changed",
    [
        {"small": {"source": "/m/small-v2"}},
        {"small": {"max_model_len": 4096}},
        {"small": {"engine_args": {"quantization": "awq"}}},
        {"small": {"tool_call_parser": "hermes"}},
        {"spare": {"source": "/m/spare-v2"}},  # small's fallback answers for it
    ],
    ids=["weights", "context", "quantization", "tool_calls", "fallback_weights"],
)
def test_a_change_to_what_answers_starts_a_new_cache(changed: dict[str, Any]) -> None:
    assert _scope(_catalog(**changed), "small") != _scope(_catalog(), "small")
    assert _scope(_catalog(**changed), "auto") != _scope(_catalog(), "auto")


@pytest.mark.parametrize(
    "changed",
    [
        {"small": {"price_prompt_per_mtok": 3.0, "max_inflight": 8, "timeout_s": 60}},
        {"small": {"engine_args": {"gpu_memory_utilization": 0.5, "enforce_eager": True}}},
    ],
    ids=["prices_and_limits", "speed"],
)
def test_prices_and_speed_keep_the_cache(changed: dict[str, Any]) -> None:
    assert _scope(_catalog(**changed), "small") == _scope(_catalog(), "small")


def test_only_the_models_that_may_answer_a_name_are_in_its_scope() -> None:
    """big answers no request for small (it is no fallback of small's), but any for auto,
    whose chain a tier decides."""
    new_big = _catalog(big={"source": "/m/big-v2"})
    assert _scope(new_big, "small") == _scope(_catalog(), "small")
    assert _scope(new_big, "auto") != _scope(_catalog(), "auto")
    assert _scope(_catalog(big={"tier": 3}), "auto") != _scope(_catalog(), "auto")


def test_an_answer_cached_before_new_weights_is_not_served_after() -> None:
    store = FakeStore()
    before = Pipeline(store, catalog=_catalog())
    before.on_request(None, raw_request(cid="r-1", temperature=0, model="small"))
    [sent] = before.send.sent
    work = WorkItem.model_validate_json(sent.value)
    before.on_completion(completion(last_attempt(work), "Old weights"))
    again = Pipeline(store, catalog=_catalog(small={"price_prompt_per_mtok": 9.0}))
    again.on_request(None, raw_request(cid="r-2", temperature=0, model="small"))
    [hit] = again.send.sent
    assert (result_of(hit).text, result_of(hit).cache) == ("Old weights", CacheStatus.EXACT)
    after = Pipeline(store, catalog=_catalog(small={"source": "/m/small-v2"}))
    after.on_request(None, raw_request(cid="r-3", temperature=0, model="small"))
    [sent] = after.send.sent
    assert sent.topic == "llmq.work.small.interactive"
