"""The front door's latency of a streamed request is timed from its arrival, before its body
is read, as a whole one's is (it was timed from the publish, leaving out the body's read and
the wait for Kafka), and observed however it ends: its client leaving mid-answer, or before
the first piece, too (neither was observed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from gateway.app import build
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.tenants import TenantPolicy
from tests.unit.asgi import post_scope, replied

pytestmark = pytest.mark.timeout(30)

BODY_S = 0.3
"""How long the slow client takes to send its body."""


class Client:
    """llmq's client as the routes use it: a stream gives `pieces` pieces, then ends with
    the last (`ends`) or waits on (a generation under way)."""

    def __init__(self, pieces: int, *, ends: bool) -> None:
        self.pieces, self.ends = pieces, ends

    async def submit_request(self, request: InferenceRequest) -> None:
        pass

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        for n in range(self.pieces):
            yield Delta("a", n)
        if self.ends:
            yield Delta("", self.pieces, finish_reason="stop")
        else:
            await asyncio.Event().wait()

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        pass


class Workers:
    async def serves(self, models: object) -> bool:
        return True

    async def close(self) -> None:
        pass


def _app(monkeypatch: pytest.MonkeyPatch, client: Client) -> FastAPI:
    app = build(GatewaySettings(resume_grace_s=0.01), Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


async def _stream(app: FastAPI, *, body_s: float = 0.0, leaves: str = "") -> int:
    """POST a streamed chat completion whose body comes after `body_s`; its client leaves
    once the first events came (`leaves` "after_first") or at once ("before_first"): the
    status sent."""
    body = {"model": Catalog.builtin().default, "messages": [{"role": "user", "content": "Hi"}]}
    sent: list[Message] = []
    left, read = asyncio.Event(), False
    if leaves == "before_first":
        left.set()

    async def receive() -> dict[str, Any]:
        nonlocal read
        if not read:
            read = True
            await asyncio.sleep(body_s)
            return {"type": "http.request", "body": json.dumps({**body, "stream": True}).encode()}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if leaves == "after_first" and message.get("body"):
            left.set()

    scope = post_scope(app, "/v1/chat/completions", {"content-type": "application/json"})
    await app(scope, receive, send)
    await asyncio.gather(*app.state.door._background)
    return replied(sent)[0]


def _timed(name: str, labels: dict[str, str] | None = None) -> tuple[float, float]:
    """A histogram's count and sum."""
    count = REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0
    return count, REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0


def test_a_stream_is_timed_from_before_its_body_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    app = _app(monkeypatch, Client(2, ends=True))
    latency, first = (
        _timed("llmq_gateway_latency_seconds", {"stream": "true"}),
        _timed("llmq_gateway_first_piece_seconds"),
    )
    assert asyncio.run(_stream(app, body_s=BODY_S)) == 200
    count, total = _timed("llmq_gateway_latency_seconds", {"stream": "true"})
    assert count == latency[0] + 1 and total - latency[1] >= BODY_S
    count, total = _timed("llmq_gateway_first_piece_seconds")
    assert count == first[0] + 1 and total - first[1] >= BODY_S


@pytest.mark.parametrize(("leaves", "status"), [("after_first", 200), ("before_first", 499)])
def test_a_stream_whose_client_leaves_is_timed(
    monkeypatch: pytest.MonkeyPatch, leaves: str, status: int
) -> None:
    app = _app(monkeypatch, Client(1 if leaves == "after_first" else 0, ends=False))
    before, _ = _timed("llmq_gateway_latency_seconds", {"stream": "true"})
    assert asyncio.run(_stream(app, leaves=leaves)) == status
    assert _timed("llmq_gateway_latency_seconds", {"stream": "true"})[0] == before + 1
