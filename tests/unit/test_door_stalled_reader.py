"""A streamed answer whose client stays connected but takes nothing more: its next event not
sent within sse.SEND_S ends the stream as its client's leaving does. Neither Starlette nor
uvicorn bounds a write: the stream waited on the send for ever, holding its answer so far,
its waiter and its socket."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.types import Message

from gateway import sse
from gateway.app import build
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.request import DEFAULT_TENANT, InferenceRequest
from schemas.tenants import TenantPolicy
from tests.unit.asgi import post_scope

pytestmark = pytest.mark.timeout(30)

MODEL = Catalog.builtin().default


class Client:
    """llmq's client as the routes use it: each stream gives its first piece, then nothing
    more; what was published, cancelled, and whose stream was closed."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []
        self.closed: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        try:
            yield Delta("Hel", 0)
            await asyncio.Event().wait()
        finally:
            self.closed.append(correlation_id)

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Workers:
    async def serves(self, models: object) -> bool:
        return True


def _cancelled() -> float:
    return REGISTRY.get_sample_value("llmq_gateway_cancelled_total") or 0.0


async def _stalled(app: Any, client: Client, n: int) -> list[Message]:
    """A streamed call of `n` choices whose client never leaves and takes no event: every
    send of one waits for ever. What was sent, once the app returned (its streams closed by
    then) and the cancels it sent are done."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "n": n}
    read = False

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            return {"type": "http.request", "body": json.dumps({**body, "stream": True}).encode()}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            await asyncio.Event().wait()
        sent.append(message)

    await app(post_scope(app, "/v1/chat/completions", {}), receive, send)
    assert sorted(client.closed) == sorted(client.submitted) and len(client.submitted) == n
    await asyncio.gather(*app.state.door._background)
    return sent


@pytest.mark.parametrize("n", [1, 2])
def test_a_stream_whose_client_takes_nothing_ends_as_if_it_left(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, n: int
) -> None:
    """Its streams are closed, and its requests cancelled as a leaving client's are: one
    choice's after the grace to resume it (the timer is set), n choices' at once, counted."""
    monkeypatch.setattr(sse, "SEND_S", 0.01)
    app = build(GatewaySettings(resume_grace_s=3600), Catalog.builtin(), TenantPolicy.load(None))
    client, before = Client(), _cancelled()
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    with caplog.at_level(logging.WARNING, "gateway.sse"):
        sent = asyncio.run(_stalled(app, client, n))
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert "took no event for 0.01 s: ended as if it left" in caplog.text
    doomed = app.state.door._doomed
    if n == 1:
        assert list(doomed) == [(DEFAULT_TENANT, client.submitted[0])]
        assert client.cancelled == []
    else:
        assert not doomed and sorted(client.cancelled) == sorted(client.submitted)
        assert _cancelled() == before + n
