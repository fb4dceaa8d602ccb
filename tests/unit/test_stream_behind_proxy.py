"""The openai SDK reading a stream through a proxy that cuts a response silent for IDLE_S
(nginx's proxy_read_timeout, an AWS ALB's idle timeout: 60 s, scaled down), the door served
by uvicorn on loopback: an answer whose first piece waits in its lane's queue past IDLE_S
comes whole, from one request. Before, the proxy cut the silent stream (a 504) and the SDK
sent the request again, at the end of the queue, each time, until it gave up."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import openai
import pytest
import uvicorn
from fastapi import FastAPI

from gateway import routes, sse
from gateway.app import build
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.tenants import TenantPolicy

pytestmark = pytest.mark.timeout(30)

MODEL = Catalog.builtin().default
IDLE_S = 0.5
QUEUED_S = 4 * IDLE_S
"""How long the first piece waits in its lane's queue."""


class Client:
    """llmq's client as the routes use it: each answer's first piece after QUEUED_S; the
    requests published and cancelled."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.cancelled: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)

    async def follow(self, correlation_id: str, **_: Any) -> AsyncIterator[Delta]:
        await asyncio.sleep(QUEUED_S)
        yield Delta("Hello", 0)
        yield Delta(" world", 5, "stop")

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        self.cancelled.append(correlation_id)


class Workers:
    async def serves(self, models: object) -> bool:
        return True


async def _proxied(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    """One connection through the proxy to the door on `port`: IDLE_S without a byte from
    the door cuts it, with a 504 where the response had not begun."""
    door_reader, door_writer = await asyncio.open_connection("127.0.0.1", port)

    async def up() -> None:
        with suppress(OSError):
            while data := await reader.read(65536):
                door_writer.write(data)
                await door_writer.drain()

    upward = asyncio.create_task(up())
    begun = False
    try:
        while True:
            try:
                async with asyncio.timeout(IDLE_S):
                    data = await door_reader.read(65536)
            except TimeoutError:
                if not begun:
                    writer.write(b"HTTP/1.1 504 Gateway Time-out\r\nContent-Length: 0\r\n\r\n")
                break
            if not data:
                break
            begun = True
            writer.write(data)
            await writer.drain()
    finally:
        upward.cancel()
        door_writer.close()
        writer.close()


@asynccontextmanager
async def _behind_proxy(app: FastAPI) -> AsyncIterator[str]:
    """The app served by uvicorn, behind the proxy: the proxy's base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, lifespan="off", log_level="warning", http="h11", ws="none")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    port = sock.getsockname()[1]
    proxy = await asyncio.start_server(lambda r, w: _proxied(r, w, port), "127.0.0.1", 0)
    try:
        while not server.started:  # noqa: ASYNC110 -- uvicorn's own flag
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}/v1"
    finally:
        proxy.close()
        await proxy.wait_closed()
        server.should_exit = True
        await serving
        sock.close()


async def _read(sdk: openai.AsyncOpenAI, api: str) -> str:
    """The answer's text as the SDK reads its stream."""
    if api == "chat":
        chunks = await sdk.chat.completions.create(
            model=MODEL, stream=True, messages=[{"role": "user", "content": "Hi"}]
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
    events = await sdk.responses.create(model=MODEL, input="Hi", stream=True, store=False)
    return "".join([e.delta async for e in events if e.type == "response.output_text.delta"])


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_a_queued_answer_comes_whole_through_a_proxy_that_cuts_silent_streams(
    monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    monkeypatch.setattr(routes, "HEADERS_WAIT_S", IDLE_S / 5)
    monkeypatch.setattr(sse, "KEEPALIVE_S", IDLE_S / 3)
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))
    client = Client()
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())

    async def main() -> str:
        async with (
            _behind_proxy(app) as url,
            openai.AsyncOpenAI(base_url=url, api_key="k", max_retries=2) as sdk,
        ):
            return await _read(sdk, api)

    assert asyncio.run(main()) == "Hello world"
    assert len(client.submitted) == 1 and client.cancelled == []
