"""A streamed answer generated again after its pieces were shown: the worker says it streamed,
the stream processor takes it over only with the same answer, a reader ends at once when a
restart differs, and a resumed stream never splices two generations."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import build
from gateway.settings import GatewaySettings
from llmq.aio import AsyncClient
from llmq.streaming import StreamReader
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.names import DLQ
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from schemas.stream import TokenDelta
from schemas.tenants import TenantPolicy
from schemas.work import Completion, WorkItem
from tests.unit.stages import (
    TIERED,
    Pipeline,
    answered,
    completion,
    raw_request,
    result_of,
)
from tests.unit.worker_fakes import FakeEngine, model_spec, serve_one, work

pytestmark = pytest.mark.timeout(30)

NO_REDIS = "redis://127.0.0.1:1/0"


def _delta(generation: str, seq: int, text: str, **more: object) -> TokenDelta:
    return TokenDelta.model_validate(
        {
            "correlation_id": "c1",
            "tenant": "default",
            "generation": generation,
            "seq": seq,
            "text": text,
            "model": "m",
            **more,
        }
    )


def _result(text: str) -> InferenceResult:
    return answered("c1", "default", text)


# The worker: a completion says whether its generation sent pieces.


def test_a_generation_that_sent_pieces_says_so_in_its_completion() -> None:
    engine = FakeEngine()
    engine.hold.clear()  # its first token goes out, then it runs past its timeout
    producer = serve_one(work(stream=True), engine, spec=model_spec(timeout_s=0.05))
    [failed] = producer.completions()
    assert producer.deltas() and failed.error is not None and failed.streamed
    whole = FakeEngine()
    whole.hold.clear()
    [unstreamed] = serve_one(work(), whole, spec=model_spec(timeout_s=0.05)).completions()
    assert unstreamed.error is not None and not unstreamed.streamed


# The stream processor: a shown answer is taken over only by the same model, deterministic.


def _admitted(harness: Pipeline, model: str = "small", **body: Any) -> WorkItem:
    data = json.loads(raw_request(stream=True, **body))
    data["model"] = model
    harness.on_request(None, json.dumps(data).encode())
    [sent] = harness.send.sent
    harness.send.sent.clear()
    return WorkItem.model_validate_json(sent.value)


def _failed(work: WorkItem, streamed: bool) -> bytes:
    done = Completion.model_validate_json(completion(work, None, ErrorCode.ENGINE_TIMEOUT))
    return done.model_copy(update={"streamed": streamed}).model_dump_json().encode()


def test_a_sampled_answer_that_failed_after_its_pieces_is_the_failure_at_once() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _admitted(harness)  # temperature 1, and small falls back to backup
    harness.on_completion(_failed(work, streamed=True))
    dead, reply = harness.send.sent
    assert dead.topic == DLQ
    error = result_of(reply).error
    assert error is not None and error.code is ErrorCode.ENGINE_TIMEOUT and error.retriable


def test_a_deterministic_answer_that_failed_after_its_pieces_is_retried_on_its_model() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _admitted(harness, temperature=0)
    harness.on_completion(_failed(work, streamed=True))
    [sent] = harness.send.sent
    retry = WorkItem.model_validate_json(sent.value)
    assert (retry.model, retry.attempt, retry.route.fell_back) == ("small", 2, False)
    assert retry.shown
    # The retry fails before its first piece: what was shown still rules out another model.
    harness.send.sent.clear()
    harness.on_completion(_failed(retry, streamed=False))
    topics = [s.topic for s in harness.send.sent if s.topic.startswith("llmq.work.")]
    assert topics == ["llmq.work.small.interactive"]  # tried again there, not on "backup"


def test_a_failure_before_any_piece_still_falls_back() -> None:
    harness = Pipeline(catalog=TIERED)
    work = _admitted(harness)
    harness.on_completion(_failed(work, streamed=False))
    [sent] = harness.send.sent
    assert WorkItem.model_validate_json(sent.value).model == "backup"


# The reader: a restart that differs ends the stream at once; one that agrees is left out.


def test_a_restart_that_differs_from_what_was_shown_ends_the_stream_at_once() -> None:
    reader = StreamReader()
    assert reader.take(_delta("A", 0, "Hello ")) is not None
    assert reader.take(_delta("A", 1, "wor")) is not None
    assert reader.take(_delta("B", 0, "Hel")) is None  # agrees so far
    with pytest.raises(LlmqError) as caught:
        reader.take(_delta("B", 1, "p!"))
    assert caught.value.code is ErrorCode.ENGINE_ERROR and "ask again" in caught.value.message


def test_a_restart_that_says_the_same_is_left_out_and_the_result_ends_it() -> None:
    reader = StreamReader()
    reader.take(_delta("A", 0, "Hello "))
    for seq, text in enumerate(["Hello ", "world", ""]):
        assert reader.take(_delta("B", seq, text)) is None
    assert reader.finish(_result("Hello world")).text == "world"


def test_a_resumed_reader_that_began_inside_a_generation_does_not_follow_another() -> None:
    reader = StreamReader(offset=6)
    assert reader.take(_delta("A", 1, "wor")) is None  # its start went by before this log
    with pytest.raises(LlmqError):
        reader.take(_delta("B", 0, "Bonjour"))
    fresh = StreamReader()  # its client has nothing: the new generation is its stream
    fresh.take(_delta("A", 1, "wor"))
    assert fresh.take(_delta("B", 0, "Bonjour")) is not None


def test_follow_ends_when_a_restart_differs_without_waiting_for_the_result() -> None:
    async def run() -> tuple[list[str], BaseException]:
        app = AsyncClient(ServiceSettings(redis_url=NO_REDIS))

        async def stored(key: tuple[str, str]) -> InferenceResult | None:
            return None

        app._stored = stored  # type: ignore[method-assign]
        for delta in [_delta("A", 0, "Hello "), _delta("A", 1, "wor"), _delta("B", 0, "Bon")]:
            app._on_delta(delta.model_dump_json().encode(), delta.correlation_id.encode())
        texts: list[str] = []
        try:  # no result comes: past wait_s the result store would be asked, and says none
            async for piece in app.follow("c1", wait_s=0):
                texts.append(piece.text)
        except (LlmqError, TimeoutError) as exc:
            return texts, exc
        raise AssertionError("the stream ended without an error")

    texts, error = asyncio.run(run())
    assert texts == ["Hello ", "wor"]
    assert isinstance(error, LlmqError) and "generated again" in error.message


# The resume route: a stored answer of another generation is never spliced on.


def _door(*deltas: TokenDelta, stored: InferenceResult | None = None) -> TestClient:
    app = build(GatewaySettings(redis_url=NO_REDIS), Catalog.builtin(), TenantPolicy.load(None))
    client: AsyncClient = app.state.door.client

    async def kept(key: tuple[str, str]) -> InferenceResult | None:
        return stored

    client._stored = kept  # type: ignore[method-assign]
    for delta in deltas:
        client._on_delta(delta.model_dump_json().encode(), delta.correlation_id.encode())
    return TestClient(app, raise_server_exceptions=False)


def _text(body: str) -> str:
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    answers = [c["choices"][0]["delta"] for c in chunks if c.get("choices")]
    return "".join(delta.get("content") or "" for delta in answers)


def _resume(http: TestClient, last: str) -> tuple[int, str]:
    response = http.get("/v1/results/c1/stream", headers={"Last-Event-ID": last})
    return response.status_code, response.text


def test_a_resume_after_a_differing_generation_is_refused_not_spliced() -> None:
    again = [_delta("B", 0, "Bonjour"), _delta("B", 1, " le monde", finish_reason="stop")]
    stored = _result("Bonjour le monde")
    status, body = _resume(_door(_delta("A", 0, "Hello "), *again, stored=stored), "6")
    assert status == 502 and "generated again" in body and "monde" not in body
    # Its first generation's later pieces came here too: the client has "wor", then the error.
    shown = [_delta("A", 0, "Hello "), _delta("A", 1, "wor")]
    status, body = _resume(_door(*shown, *again, stored=stored), "6")
    assert status == 200 and _text(body) == "wor" and "generated again" in body


def test_a_deterministic_answer_generated_again_still_resumes() -> None:
    deltas = [
        _delta("A", 0, "Hello "),
        _delta("B", 0, "Hello "),
        _delta("B", 1, "world", finish_reason="stop"),
    ]
    status, body = _resume(_door(*deltas, stored=_result("Hello world")), "6")
    assert (status, _text(body)) == (200, "world")
    status, body = _resume(_door(stored=_result("Hello world")), "6")  # no pieces here
    assert (status, _text(body)) == (200, "world")


def test_a_last_event_id_too_long_for_a_count_is_a_bad_request() -> None:
    status, body = _resume(_door(stored=_result("Hello")), "9" * 5000)
    assert status == 400 and "is not a count of characters" in body
