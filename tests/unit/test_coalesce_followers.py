"""What each coalesced copy is told: whose stream to follow (never its own), the answer of
the generation it follows (not that of one a streaming generation took over), how that
answer was obtained (a cache's, or coalesced), and `expired` once its deadline passed."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from schemas.catalog import Catalog
from schemas.errors import ErrorCode
from schemas.names import REQUESTS_KEYED, TOKENS
from schemas.result import CacheStatus, ChatCompletion
from schemas.stream import TokenDelta
from schemas.work import WorkItem
from streams.coalesce import Waiter
from streams.savings import saved
from streams.semantic import SemanticHit
from tests.unit.stages import (
    FakeSend,
    FakeStore,
    Pipeline,
    Sent,
    answer,
    completion,
    raw_request,
    result_of,
)

pytestmark = pytest.mark.timeout(60)


def _ask(harness: Pipeline, cid: str, lane: str = "interactive", **body: Any) -> list[Sent]:
    """One more copy of the same question, sampled (`cache` always): what it sent."""
    harness.send.sent.clear()
    data = json.loads(raw_request(cid=cid, cache="always", temperature=1.0, **body))
    harness.on_request(None, json.dumps(data | {"lane": lane}).encode())
    sent = list(harness.send.sent)
    harness.send.sent.clear()
    return sent


def _work(sent: list[Sent]) -> WorkItem:
    [record] = [s for s in sent if s.topic.startswith("llmq.work.")]
    return WorkItem.model_validate_json(record.value)


def _answered(harness: Pipeline, work: WorkItem, text: str) -> dict[str, tuple[str | None, str]]:
    """Who the answer `text` of `work` reached: each one's text and cache status."""
    harness.on_completion(completion(work, text))
    results = [result_of(s) for s in harness.send.sent]
    harness.send.sent.clear()
    return {r.correlation_id or "": (r.text, r.cache.value) for r in results}


def test_a_replaced_generations_answer_is_not_given_to_a_streaming_ones_followers() -> None:
    """plain-0 shows no pieces, so live-0 leads its own, which live-1 streams: plain-0's
    sample, first to end, would not continue what live-1 showed of live-0's."""
    harness = Pipeline()
    plain = _work(_ask(harness, "plain-0"))
    live = _work(_ask(harness, "live-0", stream=True))
    [notice] = _ask(harness, "live-1", stream=True)
    assert TokenDelta.model_validate_json(notice.value).follows == "live-0"
    assert _answered(harness, plain, "plain-0's sample") == {
        "plain-0": ("plain-0's sample", "none")
    }
    assert _answered(harness, live, "live-0's sample") == {
        "live-0": ("live-0's sample", "none"),
        "live-1": ("live-0's sample", "coalesced"),
    }
    assert harness.table == {}


def test_a_replaced_generations_answer_is_given_to_the_copies_that_do_not_stream() -> None:
    """plain-1 waited on plain-0 when live-0 took over: it shows no pieces, so plain-0's
    answer, first to end, is its own (it waited on that one's generation; were live-0's to
    fail, it would have none); live-1 streams live-0's and takes that."""
    harness = Pipeline()
    plain = _work(_ask(harness, "plain-0"))
    assert _ask(harness, "plain-1") == []  # a follower of plain-0
    live = _work(_ask(harness, "live-0", stream=True))
    _ask(harness, "live-1", stream=True)
    assert _answered(harness, plain, "plain-0's sample") == {
        "plain-0": ("plain-0's sample", "none"),
        "plain-1": ("plain-0's sample", "coalesced"),
    }
    assert _answered(harness, live, "live-0's sample") == {
        "live-0": ("live-0's sample", "none"),
        "live-1": ("live-0's sample", "coalesced"),
    }
    assert harness.table == {}


def test_a_streamed_leader_redelivered_to_its_process_is_not_told_to_follow_itself() -> None:
    """Its reader would start its own stream over at the notice, and never get past it."""
    harness = Pipeline()
    raw = raw_request(cid="s-0", temperature=0, stream=True)
    harness.on_request(None, raw)
    harness.send.sent.clear()
    harness.on_request(None, raw)
    assert [s for s in harness.send.sent if s.topic == TOKENS] == []


class Paraphrase:
    """A semantic cache whose every lookup, once on, finds a paraphrase's answer."""

    def __init__(self) -> None:
        self.on = False

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        return SemanticHit("paraphrase", 0.9) if self.on else None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        pass

    async def forget(self, scope: str, fingerprint: str) -> None:
        pass


class Meanwhile(FakeSend):
    """Once `answer` is set: the exact cache has it for a record on its way to dedupe (another
    generation's, ended since its admission looked)."""

    def __init__(self, store: FakeStore) -> None:
        super().__init__()
        self.store = store
        self.answer: ChatCompletion | None = None

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        if topic == REQUESTS_KEYED and key is not None and self.answer is not None:
            self.store.answers[key.decode()] = self.answer


@pytest.mark.parametrize("cache", [CacheStatus.EXACT, CacheStatus.SEMANTIC])
def test_the_followers_of_an_answer_from_a_cache_are_told_it_came_from_it(
    cache: CacheStatus,
) -> None:
    """batch-1 follows batch-0; live-0, more urgent, leads for it and a cache answers: an
    app that asks again without the cache when it is semantic must see so."""
    store, similar = FakeStore(), Paraphrase()
    send = Meanwhile(store)
    harness = Pipeline(store, send=send, similar=similar)
    store.answers["paraphrase"] = answer("A paraphrase's answer")
    _work(_ask(harness, "batch-0", "batch"))
    assert [s.topic for s in _ask(harness, "batch-1", "batch")] == []
    if cache is CacheStatus.EXACT:
        send.answer = answer("The same question's answer")
    similar.on = True
    replies = [result_of(s) for s in _ask(harness, "live-0") if s.topic == "app.replies"]
    assert {r.correlation_id: r.cache for r in replies} == {"live-0": cache, "batch-1": cache}
    follower = next(r for r in replies if r.correlation_id == "batch-1")
    event = saved(follower, Catalog.builtin())
    assert event is not None and event.cache is cache and event.saved_usd > 0


def test_a_follower_whose_deadline_passed_while_it_waited_is_told_it_expired() -> None:
    harness = Pipeline()
    work = _work(_ask(harness, "c-0"))
    _ask(harness, "c-1")
    _ask(harness, "c-2")
    # c-1's deadline passes while it waits (admission refuses a request past its own).
    key = f"{work.fingerprint}/0".encode()
    waiter = Waiter.model_validate_json(harness.table[key])
    assert waiter.correlation_id == "c-1"
    late = waiter.model_copy(update={"deadline": time.time() - 1})
    harness.table[key] = late.model_dump_json().encode()
    harness.on_completion(completion(work, "The answer"))
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert {cid: (r.status, r.text) for cid, r in results.items()} == {
        "c-0": ("ok", "The answer"),
        "c-1": ("error", None),
        "c-2": ("ok", "The answer"),
    }
    error = results["c-1"].error
    assert error is not None and error.code is ErrorCode.EXPIRED
    assert harness.table == {}
