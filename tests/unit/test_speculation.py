"""Speculation: a cacheable request goes to the engines while the semantic cache is looked
up; a hit answers it from the cache and cancels the generation, whose outcome then only
settles what it cost (the worker's side is in test_worker.py)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest

from schemas.errors import ErrorCode
from schemas.names import CANCELS
from schemas.result import CacheStatus
from schemas.stream import Cancel
from schemas.work import Completion, WorkItem
from streams.semantic import SemanticHit
from tests.unit.stages import (
    FakeLedger,
    FakeStore,
    Pipeline,
    answer,
    completion,
    metered,
    raw_request,
    result_of,
)

CACHED = "f" * 64
"""The fingerprint of the answer the semantic cache matches."""


class FakeSimilar:
    """A semantic cache that matches every question or none (or fails), and records what it
    is told; `during` runs inside each lookup (what happens while it embeds)."""

    def __init__(self, hits: bool) -> None:
        self.hits = hits
        self.fails = False
        self.during: Callable[[], Awaitable[None]] | None = None
        self.looked_up: list[str] = []
        self.forgotten: list[str] = []

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        self.looked_up.append(text)
        if self.during is not None:
            await self.during()
        if self.fails:
            raise RuntimeError("the embedder failed")
        return SemanticHit(CACHED, 0.9) if self.hits else None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        return None

    async def forget(self, scope: str, fingerprint: str) -> None:
        self.forgotten.append(fingerprint)


def _pipeline(hits: bool, cached: bool = True) -> tuple[Pipeline, FakeLedger, FakeSimilar]:
    store, ledger, similar = FakeStore(), FakeLedger(), FakeSimilar(hits)
    if cached:
        store.answers[CACHED] = answer("From the cache")
    return Pipeline(store, similar=similar, ledger=ledger), ledger, similar


def _topics(harness: Pipeline) -> list[str]:
    return [s.topic for s in harness.send.sent]


def test_a_miss_was_already_sent_to_the_engines_as_speculative() -> None:
    harness, _, _ = _pipeline(hits=False)
    harness.on_request(None, raw_request(temperature=0))
    [sent] = harness.send.sent
    assert WorkItem.model_validate_json(sent.value).speculative
    assert sent.topic == "llmq.work.smollm2-135m.interactive"


def test_without_a_question_to_look_up_nothing_is_speculative() -> None:
    harness, _, _ = _pipeline(hits=True)
    harness.on_request(None, raw_request(temperature=0.7))  # sampled: no cache at all
    assert not WorkItem.model_validate_json(harness.send.sent[0].value).speculative
    plain = Pipeline()  # no semantic cache
    plain.on_request(None, raw_request(temperature=0))
    assert not WorkItem.model_validate_json(plain.send.sent[0].value).speculative


def test_a_hit_answers_from_the_cache_and_cancels_the_generation_as_answered() -> None:
    harness, ledger, _ = _pipeline(hits=True)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    work, *rest = harness.send.sent
    speculation = WorkItem.model_validate_json(work.value).speculation
    assert speculation is not None
    by_topic = {s.topic: s for s in rest}
    assert set(by_topic) == {CANCELS, "app.replies"}
    cancel = Cancel.model_validate_json(by_topic[CANCELS].value)
    assert (cancel.correlation_id, cancel.tenant, cancel.answered) == ("t-1", "acme", True)
    assert cancel.speculation == speculation, "it stops this send, not a later one"
    result = result_of(by_topic["app.replies"])
    assert (result.cache, result.text) == (CacheStatus.SEMANTIC, "From the cache")
    assert ledger.calls == [], "the hold stays: the cancelled generation may have cost"
    assert harness.table == {}


def test_the_superseded_generation_settles_its_cost_and_hold_and_is_not_answered() -> None:
    harness, ledger, _ = _pipeline(hits=True)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.send.sent.clear()
    spent = metered(work, 0.01).metering
    outcome = Completion.model_validate_json(completion(work, None, ErrorCode.SUPERSEDED))
    harness.on_completion(outcome.model_copy(update={"metering": spent}).model_dump_json().encode())
    assert harness.send.sent == [], "no reply, no retry, no dead letter"
    assert ledger.calls == ["settle t-1 0.01", "release t-1"]
    assert harness.store.results["t-1"].cache is CacheStatus.SEMANTIC


def test_an_earlier_sends_superseded_outcome_leaves_the_hold_to_the_resend() -> None:
    # The stream processor cancelled send s1 and died before its reply; the resend's lookup
    # missed, and it is being generated when s1's outcome arrives.
    harness, ledger, _ = _pipeline(hits=False)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    resend = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.send.sent.clear()
    first = resend.model_copy(update={"speculation": "s1"})
    spent = metered(first, 0.01).metering
    outcome = Completion.model_validate_json(completion(first, None, ErrorCode.SUPERSEDED))
    harness.on_completion(outcome.model_copy(update={"metering": spent}).model_dump_json().encode())
    assert harness.send.sent == []
    assert ledger.calls == ["settle t-1 0.01"], "the hold stays for the resend"
    harness.on_completion(completion(resend, "Generated"))
    [reply] = harness.send.sent
    assert result_of(reply).text == "Generated"
    assert ledger.calls[1:] == ["release t-1"]


def test_a_superseded_outcome_ahead_of_the_caches_reply_still_releases_the_hold() -> None:
    # The worker's outcome of the cancelled send can arrive while the cache's reply is still
    # being sent (the request still leads, with that very send).
    harness, ledger, _ = _pipeline(hits=False)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    sent = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.on_completion(completion(sent, None, ErrorCode.SUPERSEDED))
    assert ledger.calls[-1:] == ["release t-1"]


def test_a_stream_whose_engine_claimed_it_first_is_left_to_its_generation() -> None:
    harness, ledger, _ = _pipeline(hits=True)
    harness.store.claims["acme/t-1"] = "engine"  # its first tokens are out
    harness.on_request(None, raw_request(cid="t-1", temperature=0, stream=True))
    assert _topics(harness) == ["llmq.work.smollm2-135m.interactive"], "no reply, no cancel"
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.send.sent.clear()
    harness.on_completion(completion(work, "Generated"))
    [reply] = harness.send.sent
    assert (result_of(reply).text, result_of(reply).cache) == ("Generated", CacheStatus.NONE)
    assert ledger.calls == ["release t-1"]


def test_a_stream_the_cache_claims_is_answered_from_it() -> None:
    harness, _, _ = _pipeline(hits=True)
    harness.on_request(None, raw_request(cid="t-1", temperature=0, stream=True))
    assert harness.store.claims == {"acme/t-1": "cache"}
    assert sorted(_topics(harness)[1:]) == sorted([CANCELS, "app.replies"])


def test_a_match_whose_answer_expired_is_forgotten_and_the_generation_answers() -> None:
    harness, _, similar = _pipeline(hits=True, cached=False)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    assert _topics(harness) == ["llmq.work.smollm2-135m.interactive"]
    assert similar.forgotten == [CACHED]


def test_a_failed_lookup_leaves_the_request_to_its_generation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness, ledger, similar = _pipeline(hits=True)
    similar.fails = True
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    assert _topics(harness) == ["llmq.work.smollm2-135m.interactive"], "no error reply, no DLQ"
    assert ledger.calls == []
    assert "the semantic cache could not answer t-1" in caplog.text
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.send.sent.clear()
    harness.on_completion(completion(work, "Generated"))
    assert [result_of(s).text for s in harness.send.sent] == ["Generated"]


class ClaimlessStore(FakeStore):
    """A store whose claims fail (Redis went away mid-lookup)."""

    async def claim(self, tenant: str, correlation_id: str) -> bool:
        raise ConnectionError("redis gone")


def test_a_failed_claim_leaves_the_stream_to_its_generation() -> None:
    store = ClaimlessStore()
    store.answers[CACHED] = answer("From the cache")
    harness = Pipeline(store, similar=FakeSimilar(hits=True), ledger=FakeLedger())
    harness.on_request(None, raw_request(cid="t-1", temperature=0, stream=True))
    assert _topics(harness) == ["llmq.work.smollm2-135m.interactive"], "no error, no cancel"
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    harness.send.sent.clear()
    harness.on_completion(completion(work, "Generated"))
    assert [result_of(s).text for s in harness.send.sent] == ["Generated"]


def test_a_hit_after_the_generation_answered_is_dropped() -> None:
    harness, _, similar = _pipeline(hits=True)

    async def answered_meanwhile() -> None:
        work = WorkItem.model_validate_json(harness.send.sent[0].value)
        await harness.complete.on_completion(None, completion(work, "Generated"))

    similar.during = answered_meanwhile
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    assert _topics(harness) == ["llmq.work.smollm2-135m.interactive", "app.replies"]
    assert result_of(harness.send.sent[1]).text == "Generated", "answered once, no cancel"


def test_the_batch_lane_is_looked_up_first_and_a_hit_queues_nothing() -> None:
    harness, ledger, _ = _pipeline(hits=True)
    batch = json.loads(raw_request(cid="t-1", temperature=0))
    harness.on_request(None, json.dumps({**batch, "lane": "batch"}).encode())
    [reply] = harness.send.sent
    assert (reply.topic, result_of(reply).cache) == ("app.replies", CacheStatus.SEMANTIC)
    assert ledger.calls == ["release t-1"]
    missed, _, _ = _pipeline(hits=False)
    missed.on_request(None, json.dumps({**batch, "lane": "batch"}).encode())
    [sent] = missed.send.sent
    assert sent.topic == "llmq.work.smollm2-135m.batch"
    assert not WorkItem.model_validate_json(sent.value).speculative


def test_a_client_cancel_of_a_request_a_cache_answered_promotes_nobody() -> None:
    harness, _, similar = _pipeline(hits=True)
    harness.on_request(None, raw_request(cid="t-1", temperature=0))
    first = WorkItem.model_validate_json(harness.send.sent[0].value)
    # A copy leads a generation of its own, with a follower (the cache has no answer now).
    similar.hits = False
    harness.on_request(None, raw_request(cid="t-2", temperature=0))
    harness.on_request(None, raw_request(cid="t-3", temperature=0))
    harness.send.sent.clear()
    harness.on_completion(completion(first, None, ErrorCode.CANCELLED))
    assert [s.topic for s in harness.send.sent] == ["app.replies"], "no work handed on"
    assert result_of(harness.send.sent[0]).cache is CacheStatus.SEMANTIC, "its first answer"
