"""Coalescing, cascades and fallbacks, tenant refusals and compression in the stages."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import TOKENS
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import (
    CacheStatus,
)
from schemas.retry import RetryPolicy
from schemas.stream import TokenDelta
from schemas.work import Completion, WorkItem
from streams.coalesce import Coalescer, Waiter
from streams.retries import retry_of
from streams.semantic import SemanticHit
from tests.unit.stages import (
    TIERED,
    FailingSend,
    FakeLedger,
    FakeSend,
    Pipeline,
    Sent,
    completion,
    last_attempt,
    raw_request,
    result_of,
    tiered_work,
)


@pytest.fixture
def harness() -> Pipeline:
    return Pipeline()


def _copies(harness: Pipeline, n: int, **body: Any) -> list[WorkItem]:
    """n identical deterministic requests, each with its own id and reply topic."""
    for i in range(n):
        harness.on_request(None, _copy(i, **body))
    return [WorkItem.model_validate_json(s.value) for s in harness.send.sent]


def _copy(i: int, **body: Any) -> bytes:
    """The i-th of those copies."""
    data = json.loads(raw_request(cid=f"copy-{i}", temperature=0, **body))
    data["reply_to"] = f"app.replies.{i % 3}"
    data["created_at"] = 1_000.0 + i
    return json.dumps(data).encode()


def test_identical_requests_in_flight_share_one_generation(harness: Pipeline) -> None:
    [work] = _copies(harness, 100)
    assert work.request.correlation_id == "copy-0"
    harness.send.sent.clear()
    harness.on_completion(completion(work, "Shared"))
    results = [result_of(s) for s in harness.send.sent]
    assert sorted(r.correlation_id or "" for r in results) == sorted(
        f"copy-{i}" for i in range(100)
    )
    for sent, result in zip(harness.send.sent, results, strict=True):
        cid = result.correlation_id or ""
        i = int(cid.split("-")[1])
        assert (sent.topic, sent.key) == (f"app.replies.{i % 3}", cid.encode())
        assert result.text == "Shared"
        assert result.response is not None
        assert i == 0 or result.response.id == f"chatcmpl-copy-{i}"
        assert result.cache is (CacheStatus.NONE if i == 0 else CacheStatus.COALESCED)
    assert harness.table == {}
    # The answer is cached now: a later copy is served from the cache, not coalesced.
    harness.send.sent.clear()
    harness.on_request(None, raw_request(cid="copy-late", temperature=0))
    [late] = harness.send.sent
    assert result_of(late).cache is CacheStatus.EXACT


def test_followers_share_the_leaders_error_too(harness: Pipeline) -> None:
    [work] = _copies(harness, 3)
    harness.send.sent.clear()
    harness.on_completion(completion(last_attempt(work), None))
    dead, *replies = harness.send.sent
    assert dead.topic == "llmq.dlq"
    results = [result_of(s) for s in replies]
    assert [r.status for r in results] == ["error"] * 3
    assert all(r.error and r.error.message.startswith("failed after 3 attempts") for r in results)
    assert harness.store.answers == {}


def test_sampled_copies_are_not_coalesced(harness: Pipeline) -> None:
    for i in range(3):
        harness.on_request(None, raw_request(cid=f"s-{i}", temperature=0.9))
    assert [s.topic for s in harness.send.sent] == ["llmq.work.smollm2-135m.interactive"] * 3
    assert harness.table == {}


@pytest.mark.parametrize(
    ("failures", "error"),
    [(1, ConnectionError("broker gone")), (3, KafkaTimeoutError())],
    ids=["one-send", "kafka-away-a-while"],
)
def test_followers_of_a_completion_whose_reply_failed_are_told_so_and_retry_from_the_cache(
    failures: int, error: Exception
) -> None:
    """The completion is not read again after its Guard answered the leader: the copies
    waited on it, and every later copy joined it, for good (LLMQ_COALESCE_STALE_S). With
    Kafka away for more than one send, their failure is sent again until it takes it (it was
    dropped with the entry: nobody answered them)."""
    flaky = FailingSend("app.replies", failures, error)
    harness = Pipeline(send=flaky)
    [work] = _copies(harness, 5)
    flaky.sent.clear()
    harness.on_completion(completion(work, "Late"))  # the broker fails the leader's reply
    results = {
        r.correlation_id: r for r in (result_of(s) for s in flaky.sent if s.topic != "llmq.dlq")
    }
    assert set(results) == {f"copy-{i}" for i in range(5)}
    assert results.pop("copy-0").text == "Late"  # the Guard's reply: the result kept first
    assert all(r.error and r.error.retriable for r in results.values())
    assert harness.table == {}
    flaky.sent.clear()
    harness.on_request(None, _copy(5))  # a retry, answered from the cache filled before
    [again] = flaky.sent
    assert (result_of(again).text, result_of(again).cache) == ("Late", CacheStatus.EXACT)


def test_a_stale_leader_is_replaced_and_its_followers_inherited() -> None:
    table: dict[bytes, bytes] = {}
    coalescer = Coalescer(table, stale_after_s=10)
    request = InferenceRequest.model_validate(
        {"correlation_id": "a", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    assert not coalescer.join(request, "fp", now=100)
    assert coalescer.join(request.model_copy(update={"correlation_id": "b"}), "fp", now=105)
    assert not coalescer.join(request.model_copy(update={"correlation_id": "c"}), "fp", now=120)
    assert coalescer.followers("fp") == 1
    assert [w.correlation_id for w in coalescer.waiters("fp", 0, 1)] == ["b"]


def test_a_leader_redelivered_after_its_process_died_sends_its_work_again() -> None:
    # The first process wrote the entries (they reach the changelog at once) and died before
    # its work item reached Kafka: a new process restores them and reads the request again.
    first = Pipeline()
    _copies(first, 2)
    restored = Pipeline(table=dict(first.table))
    restored.on_request(None, _copy(0))
    [again] = [WorkItem.model_validate_json(s.value) for s in restored.send.sent]
    assert again.request.correlation_id == "copy-0"
    restored.send.sent.clear()
    restored.on_completion(completion(again, "Recovered"))
    assert sorted(result_of(s).correlation_id or "" for s in restored.send.sent) == [
        "copy-0",
        "copy-1",
    ]
    assert restored.table == {}


def test_a_redelivered_leader_in_its_own_process_does_not_generate_twice() -> None:
    table: dict[bytes, bytes] = {}
    coalescer = Coalescer(table, stale_after_s=10, epoch="this")
    request = InferenceRequest.model_validate(
        {"correlation_id": "a", "body": {"messages": [{"role": "user", "content": "x"}]}}
    )
    assert not coalescer.join(request, "fp", now=100)
    assert coalescer.join(request, "fp", now=101), "its work is out: it waits like a copy"
    reborn = Coalescer(table, stale_after_s=10, epoch="next")
    assert not reborn.join(request, "fp", now=102), "another process's entry: it leads again"
    assert reborn.followers("fp") == 1, "and the copies waiting keep waiting"
    leader = reborn.leader("fp")
    assert leader is not None and leader.epoch == "next"
    assert reborn.join(request.model_copy(update={"correlation_id": "b"}), "fp", now=103)


def test_an_unsure_answer_escalates_and_followers_keep_waiting() -> None:
    harness = Pipeline(catalog=TIERED)
    work = tiered_work(harness, "auto")
    assert (work.model, work.route.chain[:2]) == ("small", ["small", "big"])
    assert work.route.cascade
    data = json.loads(raw_request(cid="t-2", temperature=0))
    harness.on_request(None, json.dumps({**data, "model": "auto"}).encode())
    assert harness.send.sent == [], "the copy follows the generation in flight"
    unsure = Completion.model_validate_json(completion(work, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.big.interactive"
    escalated = WorkItem.model_validate_json(sent.value)
    assert escalated.fingerprint == work.fingerprint
    assert (escalated.route.tried, escalated.route.escalated) == (["small"], True)
    harness.send.sent.clear()
    sure = Completion.model_validate_json(completion(escalated, "Surely.")).model_copy(
        update={"mean_logprob": -0.1}
    )
    harness.on_completion(sure.model_dump_json().encode())
    results = {r.correlation_id: r for r in map(result_of, harness.send.sent)}
    assert set(results) == {"t-1", "t-2"}
    assert all(r.model_used == "big" and r.text == "Surely." for r in results.values())
    assert all(r.route is not None and r.route.escalated for r in results.values())


def test_an_engine_failure_falls_back_to_the_next_model() -> None:
    harness = Pipeline(catalog=TIERED)
    work = tiered_work(harness, "small")
    assert (work.route.chain, work.route.cascade) == (["small", "backup"], False)
    harness.on_completion(completion(work, None))  # engine_error
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.backup.interactive"
    fallback = WorkItem.model_validate_json(sent.value)
    assert fallback.route.fell_back and not fallback.route.escalated
    harness.send.sent.clear()
    harness.on_completion(completion(fallback, None))  # the chain is exhausted: retry it
    [sent] = harness.send.sent
    assert sent.topic == "llmq.work.backup.interactive"
    retry = WorkItem.model_validate_json(sent.value)
    assert (retry.attempt, retry.route) == (2, fallback.route)
    harness.send.sent.clear()
    harness.on_completion(completion(last_attempt(retry), None))  # the last try: answer
    dead, reply = harness.send.sent
    assert dead.topic == "llmq.dlq"
    result = result_of(reply)
    assert result.status == "error"
    assert result.route is not None
    assert result.route.tried == ["small"]


class GateSaysNo:
    async def check(self, work: WorkItem) -> WorkItem:
        raise LlmqError(ErrorCode.RATE_LIMITED, "over 2 requests per minute", retry_after_s=7.5)


class GateSetsADeadline:
    async def check(self, work: WorkItem) -> WorkItem:
        request = work.request.model_copy(update={"deadline": 4_000_000_000.0})
        return work.model_copy(update={"request": request})


def test_the_work_sent_on_is_the_one_the_gate_admitted() -> None:
    """A budgeted request's deadline is its hold's life (streams.gate)."""
    harness = Pipeline(gate=GateSetsADeadline())
    harness.on_request(None, raw_request(cid="r-1"))
    [sent] = harness.send.sent
    assert WorkItem.model_validate_json(sent.value).request.deadline == 4_000_000_000.0


def test_a_refused_request_is_answered_but_not_dead_lettered() -> None:
    ledger = FakeLedger()
    harness = Pipeline(gate=GateSaysNo(), ledger=ledger)
    harness.on_request(None, raw_request(cid="r-1"))
    [reply] = harness.send.sent
    result = result_of(reply)
    assert result.error is not None
    assert (result.error.code, result.error.retry_after_s) == (ErrorCode.RATE_LIMITED, 7.5)
    assert ledger.calls == [], "the gate gives back what it held; a hold of r-1 is another's"


def test_compression_changes_what_the_engine_sees_and_keeps_the_original() -> None:
    """Off the event loop: a long prompt's compression would hold every agent meanwhile."""
    loops: list[asyncio.AbstractEventLoop | None] = []

    def squeeze(messages: list[ChatMessage]) -> list[ChatMessage]:
        try:
            loops.append(asyncio.get_running_loop())
        except RuntimeError:  # none in this thread
            loops.append(None)
        return [m.model_copy(update={"content": " ".join(m.content.split())}) for m in messages]

    harness = Pipeline(compress=squeeze)
    raw = json.dumps(
        {"correlation_id": "z", "body": {"messages": [{"role": "user", "content": "a    b  "}]}}
    )
    harness.on_request(None, raw.encode())
    work = WorkItem.model_validate_json(harness.send.sent[0].value)
    assert work.request.body.messages[0].content == "a b"
    assert work.uncompressed is not None
    assert work.uncompressed[0].content == "a    b  "
    assert loops == [None], "compressed on the event loop"
    # A raw prompt (/v1/completions) is continued as it is: its every blank counts.
    body = {"messages": [{"role": "user", "content": "a    b  "}], "raw_prompt": True}
    harness.on_request(None, json.dumps({"correlation_id": "r", "body": body}).encode())
    work = WorkItem.model_validate_json(harness.send.sent[1].value)
    assert work.request.body.messages[0].content == "a    b  " and work.uncompressed is None


def test_an_expired_request_is_answered_as_it_is_instead_of_escalated() -> None:
    harness = Pipeline(catalog=TIERED)
    work = tiered_work(harness, "auto")
    expired = work.model_copy(update={"request": work.request.model_copy(update={"deadline": 1.0})})
    unsure = Completion.model_validate_json(completion(expired, "Maybe?")).model_copy(
        update={"mean_logprob": -2.5}
    )
    harness.on_completion(unsure.model_dump_json().encode())
    [reply] = harness.send.sent
    result = result_of(reply)
    assert (result.status, result.text, result.model_used) == ("ok", "Maybe?", "small")


class RecordingSimilar:
    """A semantic cache that never hits and records what is added, and when."""

    def __init__(self, sent: list[Sent]) -> None:
        self.sent = sent
        self.added: list[tuple[str, int]] = []

    async def lookup(self, scope: str, text: str) -> SemanticHit | None:
        return None

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        self.added.append((text, len(self.sent)))

    async def forget(self, scope: str, fingerprint: str) -> None:
        raise AssertionError("nothing to forget")


def test_the_semantic_cache_learns_a_question_after_its_replies_are_out() -> None:
    send = FakeSend()
    similar = RecordingSimilar(send.sent)
    harness = Pipeline(send=send, similar=similar)
    [work] = _copies(harness, 3)
    send.sent.clear()
    harness.on_completion(completion(work, "Shared"))
    assert len(send.sent) == 3
    assert similar.added == [("Hi", 3)], "added once, after all three replies were sent"


class FailingSimilar(RecordingSimilar):
    """A semantic cache whose embedder fails on every addition."""

    async def add(self, scope: str, text: str, fingerprint: str) -> None:
        raise RuntimeError("embedder out of memory")


def test_an_addition_that_fails_is_said_not_left_unread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send = FakeSend()
    harness = Pipeline(send=send, similar=FailingSimilar(send.sent))
    [work] = _copies(harness, 1)
    send.sent.clear()
    with caplog.at_level(logging.WARNING, "streams.complete"):
        harness.on_completion(completion(work, "Answered"))
    assert [result_of(s).text for s in send.sent] == ["Answered"]
    assert "did not learn a question: RuntimeError: embedder out of memory" in caplog.text


def test_a_streaming_copy_learns_whose_stream_to_follow(harness: Pipeline) -> None:
    [leader] = _copies(harness, 1, stream=True)
    assert leader.request.body.stream
    harness.send.sent.clear()
    harness.on_request(None, raw_request(cid="copy-1", temperature=0, stream=True))
    [notice] = harness.send.sent
    delta = TokenDelta.model_validate_json(notice.value)
    assert (notice.topic, notice.key) == (TOKENS, b"copy-1")
    assert (delta.correlation_id, delta.tenant, delta.follows) == ("copy-1", "acme", "copy-0")
    harness.on_request(None, raw_request(cid="copy-2", temperature=0))  # a whole answer
    assert len(harness.send.sent) == 1  # needs no notice


def test_a_leader_whose_client_left_hands_the_generation_to_a_copy(harness: Pipeline) -> None:
    [work] = _copies(harness, 3)
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, ErrorCode.CANCELLED))
    reply, handed = harness.send.sent
    assert result_of(reply).correlation_id == "copy-0"
    assert result_of(reply).error is not None
    assert result_of(reply).error.code is ErrorCode.CANCELLED  # type: ignore[union-attr]
    promoted = WorkItem.model_validate_json(handed.value)
    assert handed.topic == "llmq.work.smollm2-135m.interactive"
    assert promoted.request.correlation_id == "copy-1"
    assert promoted.request.reply_to == "app.replies.1"
    assert promoted.fingerprint == work.fingerprint
    # Its answer reaches the copies still waiting, each once.
    harness.send.sent.clear()
    harness.on_completion(completion(promoted, "Still wanted"))
    results = sorted(
        (result_of(s) for s in harness.send.sent), key=lambda r: r.correlation_id or ""
    )
    assert [(r.correlation_id, r.text, r.cache) for r in results] == [
        ("copy-1", "Still wanted", CacheStatus.NONE),
        ("copy-2", "Still wanted", CacheStatus.COALESCED),
    ]
    assert harness.table == {}


@pytest.mark.parametrize(
    ("last_deadline", "deadline", "successor"),
    [(3_000_000_000.0, 4_000_000_000.0, "copy-1"), (None, None, "copy-2")],
)
def test_a_promoted_copy_takes_the_most_urgent_lane_and_latest_deadline_of_those_waiting(
    harness: Pipeline, last_deadline: float | None, deadline: float | None, successor: str
) -> None:
    """The copy whose deadline comes last leads: its budget hold lasts as long as the
    generation may run (one that lapsed first would let the spend pass the budget)."""
    [work] = _copies(harness, 1)  # interactive, no deadline: its client leaves
    for i, lane, until in ((1, "batch", 4_000_000_000.0), (2, "standard", last_deadline)):
        copy = json.loads(_copy(i)) | {"lane": lane, "deadline": until}
        harness.on_request(None, json.dumps(copy).encode())
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, ErrorCode.CANCELLED))
    _, handed = harness.send.sent
    promoted = WorkItem.model_validate_json(handed.value)
    assert handed.topic == "llmq.work.smollm2-135m.standard"
    assert promoted.request.correlation_id == successor
    assert (promoted.request.lane, promoted.request.deadline) == (Lane.STANDARD, deadline)


def test_copies_whose_promoted_leader_cannot_be_sent_are_told_so_and_may_retry() -> None:
    send = FailingSend("llmq.work.", failures=0)
    harness = Pipeline(send=send)
    [work] = _copies(harness, 3)
    send.sent.clear()
    send.failures = 1  # the promoted copy's work
    harness.on_completion(completion(work, None, ErrorCode.CANCELLED))
    results = sorted((result_of(s) for s in send.sent), key=lambda r: r.correlation_id or "")
    assert [(r.correlation_id, r.error and r.error.code) for r in results] == [
        ("copy-0", ErrorCode.CANCELLED),
        ("copy-1", ErrorCode.INTERNAL_ERROR),
        ("copy-2", ErrorCode.INTERNAL_ERROR),
    ]
    assert all(r.error and r.error.retriable for r in results[1:])
    assert harness.table == {}


def test_copies_of_a_generation_whose_retry_cannot_be_sent_are_told_so() -> None:
    send = FailingSend("llmq.work.", failures=0)
    harness = Pipeline(send=send)
    [work] = _copies(harness, 3)
    send.sent.clear()
    send.failures = 1  # the retry's work: the Guard answers the leader, and the copies?
    harness.on_completion(completion(work, None))  # a retriable engine failure
    results = {
        result_of(s).correlation_id: result_of(s) for s in send.sent if s.topic != "llmq.dlq"
    }
    assert set(results) == {"copy-0", "copy-1", "copy-2"}
    assert all(r.error and r.error.code is ErrorCode.INTERNAL_ERROR for r in results.values())
    assert harness.table == {}


class SnapshotAtWork(FakeSend):
    """Keeps the coalescing table as it was when work was sent: what a process that dies
    right after that send leaves in the changelog."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[bytes, bytes] = {}
        self.at_work: dict[bytes, bytes] | None = None

    def before(
        self, topic: str, key: bytes | None, value: bytes, headers: Mapping[str, bytes] | None
    ) -> None:
        if topic.startswith("llmq.work."):
            self.at_work = dict(self.table)


def test_a_promotion_lost_with_its_process_is_made_again_from_the_redelivered_completion() -> None:
    send = SnapshotAtWork()
    harness = Pipeline(send=send, table=send.table)
    [work] = _copies(harness, 3)
    send.sent.clear()
    cancelled = completion(work, None, ErrorCode.CANCELLED)
    harness.on_completion(cancelled)
    assert send.at_work is not None
    send.table.clear()
    send.table.update(send.at_work)  # the process died after sending the promoted work
    send.sent.clear()
    harness.on_completion(cancelled)  # its offset was not committed: read again
    handed = [
        WorkItem.model_validate_json(s.value) for s in send.sent if s.topic.startswith("llmq.work.")
    ]
    assert [h.request.correlation_id for h in handed] == ["copy-1"]
    harness.on_completion(completion(handed[0], "Still wanted"))
    assert harness.table == {}


def _pass_deadline(harness: Pipeline, work: WorkItem, n: int) -> None:
    """The n-th follower's deadline passes while it waits (admission refuses a request
    already past it, so it cannot join that way)."""
    key = f"{work.fingerprint}/{n}".encode()
    waiter = Waiter.model_validate_json(harness.table[key])
    harness.table[key] = waiter.model_copy(update={"deadline": 1.0}).model_dump_json().encode()


def test_copies_within_their_deadline_outlive_a_leader_whose_deadline_passed(
    harness: Pipeline,
) -> None:
    """A batch copy with a day to go was told "expired" with an interactive leader."""
    [work] = _copies(harness, 1)
    for i in (1, 2):
        copy = json.loads(_copy(i)) | {"deadline": 4_000_000_000.0}
        harness.on_request(None, json.dumps(copy).encode())
    _pass_deadline(harness, work, 0)  # copy-1's, while it waited
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, ErrorCode.EXPIRED))
    expired, reply, handed = harness.send.sent
    told = [(result_of(s).correlation_id, result_of(s).error) for s in (expired, reply)]
    assert [(cid, error and error.code) for cid, error in told] == [
        ("copy-1", ErrorCode.EXPIRED),  # told now, not answered late
        ("copy-0", ErrorCode.EXPIRED),
    ]
    promoted = WorkItem.model_validate_json(handed.value)
    assert promoted.request.correlation_id == "copy-2"
    harness.send.sent.clear()
    harness.on_completion(completion(promoted, "In time"))
    answered = sorted((result_of(s).correlation_id, result_of(s).text) for s in harness.send.sent)
    assert answered == [("copy-2", "In time")]


@pytest.mark.parametrize("leader", [ErrorCode.CANCELLED, ErrorCode.EXPIRED])
def test_copies_whose_deadline_passed_while_they_waited_are_told_expired(
    harness: Pipeline, leader: ErrorCode
) -> None:
    """Behind a cancelled leader they were told "cancelled" (none promoted: they expired)."""
    [work] = _copies(harness, 1)
    copy = json.loads(_copy(1)) | {"deadline": 4_000_000_000.0}
    harness.on_request(None, json.dumps(copy).encode())
    _pass_deadline(harness, work, 0)
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, leader))
    told = sorted((result_of(s).correlation_id, result_of(s).error) for s in harness.send.sent)
    assert [(cid, error and error.code) for cid, error in told] == [
        ("copy-0", leader),
        ("copy-1", ErrorCode.EXPIRED),
    ]
    assert harness.table == {}


def test_a_cancelled_request_nobody_else_waits_for_just_ends(harness: Pipeline) -> None:
    [work] = _copies(harness, 1)
    harness.send.sent.clear()
    harness.on_completion(completion(work, None, ErrorCode.CANCELLED))
    [reply] = harness.send.sent
    assert result_of(reply).correlation_id == "copy-0"
    assert harness.table == {}


def test_a_promoted_copy_has_retries_of_its_own(harness: Pipeline) -> None:
    """Its retry budget counts from its own first failure: counted from the first leader's
    admission, or its first failure, long past, its first failure was final."""
    [work] = _copies(harness, 1)
    harness.on_request(None, _copy(1))
    harness.send.sent.clear()
    long_ago = work.model_copy(
        update={"admitted_at": time.time() - 3600, "first_failed_at": time.time() - 3600}
    )
    harness.on_completion(completion(long_ago, None, ErrorCode.CANCELLED))
    _, handed = harness.send.sent
    promoted = WorkItem.model_validate_json(handed.value)
    failed = Completion.model_validate_json(completion(promoted, None))
    assert retry_of(failed, RetryPolicy()) is not None
