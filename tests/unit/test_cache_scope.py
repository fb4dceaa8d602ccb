"""Answers are cached under the settings of the models that give them (Catalog.cache_scope):
new weights, another context or engine arguments that change answers under the same model
name leave the answers cached before behind; prices and engine speed settings keep them."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.catalog import Catalog
from schemas.result import CacheStatus
from schemas.route import Route
from schemas.work import Completion, WorkItem
from streams.semantic import SemanticHit
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


class Similar:
    """A semantic cache that records what it learns."""

    def __init__(self) -> None:
        self.added: list[tuple[str, str, str]] = []

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        return None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        self.added.append((scope, text, fingerprint))

    async def forget(self, scope: str, fingerprint: str) -> None:
        pass

    def soon(self, scope: str, text: str) -> None:
        pass


@pytest.mark.parametrize("old", ["worker", "admission"])
def test_an_answer_of_the_old_weights_during_their_rollout_is_not_cached(old: str) -> None:
    """A worker still on the old weights answers work the new catalog admitted, or work the
    old catalog admitted is answered after the stream processor took the new one: either
    answer goes to its request, but is cached under neither the new settings' exact
    fingerprint nor their semantic scope."""
    store, similar = FakeStore(), Similar()
    new = _catalog(small={"source": "/m/small-v2"})
    admitting = Pipeline(store, catalog=_catalog() if old == "admission" else new, similar=similar)
    admitting.on_request(None, raw_request(cid="r-1", temperature=0, model="small"))
    work = WorkItem.model_validate_json(admitting.send.sent[-1].value)
    done = Completion.model_validate_json(completion(last_attempt(work), "Old weights"))
    spec = (_catalog() if old == "worker" else new).get("small")
    assert spec is not None
    answering = Pipeline(store, catalog=new, similar=similar, table=admitting.table)
    answering.on_completion(
        done.model_copy(update={"model_digest": spec.digest}).model_dump_json().encode()
    )
    [reply] = answering.send.sent
    assert result_of(reply).text == "Old weights"
    assert store.answers == {}
    assert similar.added == []


def test_an_answer_of_the_weights_the_catalog_names_is_cached() -> None:
    store, similar = FakeStore(), Similar()
    pipeline = Pipeline(store, catalog=_catalog(), similar=similar)
    pipeline.on_request(None, raw_request(cid="r-1", temperature=0, model="small"))
    work = WorkItem.model_validate_json(pipeline.send.sent[-1].value)
    done = Completion.model_validate_json(completion(last_attempt(work), "Fresh"))
    spec = _catalog().get("small")
    assert spec is not None
    stamped = done.model_copy(update={"model_digest": spec.digest})
    pipeline.on_completion(stamped.model_dump_json().encode())
    assert list(store.answers) == [work.fingerprint]
    assert [(text, fp) for _, text, fp in similar.added] == [("Hi", work.fingerprint)]
