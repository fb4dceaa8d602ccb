"""The Responses routes of a front door whose llmq client, workers and response store are
fakes: a continued response that is not stored, as OpenAI refuses it; a streamed response
whose client leaves, cancelled at once and not stored; a client gone before the first piece,
leaving nothing for asyncio to report."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any, cast

import openai
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from openai import OpenAI
from starlette.types import Message

from gateway import routes
from gateway.app import build
from gateway.response_store import Kept
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.tenants import TenantPolicy
from tests.unit.asgi import post_scope, replied

MODEL = Catalog.builtin().default


class Client:
    """llmq's client as the routes use it: each answer's first piece comes at once (or,
    `before_first`, never), and nothing after it."""

    def __init__(self, *, before_first: bool = False) -> None:
        self.before_first = before_first
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.closed: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        try:
            if not self.before_first:
                yield Delta("Hel", 0)
            await asyncio.Event().wait()  # the rest never comes
        finally:
            self.closed.append(correlation_id)

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Workers:
    async def serves(self, models: object) -> bool:
        return True


class Store:
    """The response store, holding nothing but what is kept."""

    def __init__(self) -> None:
        self.kept: list[Kept] = []

    async def response(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        return None

    async def get(self, tenant: str, response_id: str) -> Kept | None:
        return None

    async def keep(self, tenant: str, kept: Kept) -> None:
        self.kept.append(kept)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return False


def _app(monkeypatch: pytest.MonkeyPatch, client: Client, store: Store) -> FastAPI:
    """The app without its lifespan; a client that leaves would be given an hour to come
    back, were a response's stream resumable."""
    app = build(GatewaySettings(resume_grace_s=3600), Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    monkeypatch.setattr(app.state.door, "responses", store)
    return app


def test_continuing_a_response_not_stored_is_openais_400_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was a 404 with code invalid_request; fetching or deleting one stays a 404."""
    app = _app(monkeypatch, Client(), Store())
    sdk = OpenAI(api_key="k", base_url="http://testserver/v1", http_client=TestClient(app))
    with pytest.raises(openai.BadRequestError, match="no stored response resp_gone") as caught:
        sdk.responses.create(model=MODEL, input="Hi", previous_response_id="resp_gone")
    assert (caught.value.status_code, caught.value.code, caught.value.param) == (
        400,
        "previous_response_not_found",
        "previous_response_id",
    )
    assert caught.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError, match="no stored response resp_gone"):
        sdk.responses.retrieve("resp_gone")
    with pytest.raises(openai.NotFoundError, match="no stored response resp_gone"):
        sdk.responses.delete("resp_gone")


async def _stream(app: FastAPI, *, leave_at_once: bool) -> tuple[int, str]:
    """POST a streamed response straight through ASGI; its client leaves once the first
    events came (or, `leave_at_once`, before any): the status and the events sent."""
    body = {"model": MODEL, "input": "Hi", "stream": True}
    sent: list[Message] = []
    left = asyncio.Event()
    if leave_at_once:
        left.set()
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": json.dumps(body).encode()}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message.get("body"):
            left.set()

    scope = post_scope(app, "/v1/responses", {"content-type": "application/json"})
    await app(scope, receive, send)
    await asyncio.gather(*app.state.door._background)  # the cancels it sent, done
    status, events = replied(sent)
    return status, events.decode()


@pytest.mark.parametrize("leave_at_once", [False, True])
def test_a_streamed_response_whose_client_leaves_is_cancelled_at_once_and_not_stored(
    monkeypatch: pytest.MonkeyPatch, leave_at_once: bool
) -> None:
    """Such a stream does not resume: no grace time before its request is cancelled."""
    client, store = Client(before_first=leave_at_once), Store()
    app = _app(monkeypatch, client, store)
    status, events = asyncio.run(_stream(app, leave_at_once=leave_at_once))
    if leave_at_once:
        assert (status, events) == (499, "")
    else:
        assert status == 200 and "event: response.output_text.delta" in events
        assert "event: response.completed" not in events
        assert client.closed == client.submitted
    assert len(client.submitted) == 1
    assert client.cancelled == client.submitted and not app.state.door._doomed
    assert store.kept == []


def test_a_client_gone_before_the_first_piece_leaves_nothing_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gather of first pieces, cancelled, ended in a CancelledError nobody read: asyncio
    logged it at ERROR for every such client."""

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def main() -> None:
        firsts = asyncio.gather(asyncio.get_running_loop().create_future())
        request = cast(Request, SimpleNamespace(receive=gone))
        assert await routes._unless_gone(request, firsts) is None
        await asyncio.wait({firsts})  # it ends: only the route reads its outcome

    with caplog.at_level(logging.ERROR, "asyncio"):
        asyncio.run(main())
        gc.collect()
    assert "never retrieved" not in caplog.text


class Stored(Store):
    """The response store, holding one response, `resp_1`."""

    async def response(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        return {"id": response_id, "object": "response"} if response_id == "resp_1" else None


def test_retrieving_a_stored_response_as_a_stream_is_a_400_naming_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """llmq answers no response in the background, whose events retrieve(stream=True) reads:
    it was answered the JSON, and the SDK yielded no event, silently."""
    sdk = OpenAI(
        api_key="k",
        base_url="http://testserver/v1",
        http_client=TestClient(_app(monkeypatch, Client(), Stored())),
    )
    with pytest.raises(openai.BadRequestError, match="stream true is not served") as caught:
        sdk.responses.retrieve("resp_1", stream=True)
    assert caught.value.param == "stream"
    assert sdk.responses.retrieve("resp_1").id == "resp_1"


@pytest.mark.parametrize(
    "unserved",
    [
        lambda sdk: sdk.responses.input_tokens.count(model=MODEL, input="Hi"),
        lambda sdk: sdk.responses.compact(model=MODEL, input="Hi"),
    ],
    ids=["input_tokens", "compact"],
)
def test_openais_responses_endpoints_llmq_lacks_are_the_doors_404(
    monkeypatch: pytest.MonkeyPatch, unserved: Callable[[OpenAI], object]
) -> None:
    """POST /v1/responses/input_tokens and /compact matched /v1/responses/{response_id},
    whose GET and DELETE made them a 405; they are the 404 of any endpoint llmq does not
    offer, naming it."""
    app = _app(monkeypatch, Client(), Store())
    sdk = OpenAI(api_key="k", base_url="http://testserver/v1", http_client=TestClient(app))
    with pytest.raises(openai.NotFoundError, match="the front door serves no POST /v1/responses/"):
        unserved(sdk)


def test_a_previous_response_id_not_a_string_is_a_400_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its message named the field and `param` was null."""
    http = TestClient(_app(monkeypatch, Client(), Store()))
    body = {"model": MODEL, "input": "Hi", "previous_response_id": 7}
    refused = http.post("/v1/responses", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "previous_response_id"
