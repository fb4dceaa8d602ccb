"""The front door's bound on what it holds open at once (LLMQ_API_OPEN_CALLS, and the bytes
of their bodies, LLMQ_API_BODY_BYTES): a request past either is refused at once, unread,
with a 503 the SDK retries after its Retry-After, and counted; however an open request ends,
its place is given back. Without it a burst was read, parsed and held whole until the door
was OOM-killed with every stream it held."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from starlette.types import Message

from gateway.app import build
from gateway.door import MAX_JSON_BYTES
from gateway.settings import GatewaySettings
from llmq.streaming import Delta
from schemas.catalog import Catalog
from schemas.request import ChatMessage, InferenceRequest
from schemas.result import ChatCompletion, Choice, InferenceResult, Usage
from schemas.tenants import TenantPolicy, key_hash
from tests.unit.asgi import post_scope, replied

pytestmark = pytest.mark.timeout(30)

MODEL = Catalog.builtin().default
ANSWER = ChatCompletion(
    id="x",
    created=1,
    model=MODEL,
    choices=[Choice(message=ChatMessage(role="assistant", content="Hi"), finish_reason="stop")],
    usage=Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2),
)


class Client:
    """llmq's client as the routes use it: a whole answer is ANSWER; a stream gives its first
    piece, then nothing more; `broken`: publishing fails (a 500)."""

    def __init__(self) -> None:
        self.broken = False

    async def submit_request(self, request: InferenceRequest) -> None:
        if self.broken:
            raise RuntimeError("the producer failed")

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        return InferenceResult(correlation_id=correlation_id, status="ok", response=ANSWER)

    async def follow(self, correlation_id: str, **_: Any) -> Any:
        yield Delta("Hel", 0)
        await asyncio.Event().wait()

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        pass


class Workers:
    async def serves(self, models: object) -> bool:
        return True


KEYS = {"acme": "llmq-acme", "umbrella": "llmq-umbrella"}
"""The API key of each tenant of the door `_app(keyed=True)` makes."""


def _app(
    monkeypatch: pytest.MonkeyPatch,
    client: Client,
    *,
    calls: int,
    body_bytes: int = 256 << 20,
    keyed: bool = False,
    tenants: int = len(KEYS),
) -> FastAPI:
    """The app without its lifespan; a client that leaves a stream would be given an hour to
    come back (no cancel is sent meanwhile). `keyed`: with the first `tenants` of KEYS."""
    settings = GatewaySettings(api_open_calls=calls, api_body_bytes=body_bytes, resume_grace_s=3600)
    chosen = list(KEYS.items())[:tenants] if keyed else []
    keys = {key_hash(key): tenant for tenant, key in chosen}
    app = build(settings, Catalog.builtin(), TenantPolicy.model_validate({"api_keys": keys}))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


def _body(*, stream: bool = False) -> bytes:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    return json.dumps(body).encode()


class _Call:
    """One request straight through ASGI. `body` None: it is being sent (the client sends
    nothing more) until `leave` is set; then, or once its body was read, its client stays
    until `leave`, then goes away."""

    def __init__(
        self,
        app: FastAPI,
        body: bytes | None,
        headers: Mapping[str, str] | None = None,
        *,
        path: str = "/v1/chat/completions",
    ) -> None:
        sized = {} if body is None else {"content-length": str(len(body))}
        self.scope = post_scope(app, path, {"content-type": "application/json", **sized})
        self.scope["headers"] += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        self.app, self.body = app, body
        self.sent: list[Message] = []
        self.reads = 0
        self.reading, self.answering, self.leave = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        self.reads += 1
        self.reading.set()
        if self.body is not None and self.reads == 1:
            return {"type": "http.request", "body": self.body}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        if message.get("body"):
            self.answering.set()

    async def run(self) -> int:
        """The status answered."""
        await self.app(self.scope, self.receive, self.send)
        return replied(self.sent)[0]


def _overloaded(bound: str) -> float:
    return REGISTRY.get_sample_value("llmq_gateway_overloaded_total", {"bound": bound}) or 0.0


async def _refused_unread(app: FastAPI, bound: str, setting: str) -> None:
    """A call now is refused at once, its body unread: a 503 in OpenAI's shape, with a
    Retry-After of 1 to 5 s that the SDK waits before it retries, and counted."""
    before = _overloaded(bound)
    call = _Call(app, _body())
    assert await call.run() == 503
    assert call.reads == 0
    error = json.loads(replied(call.sent)[1])["error"]
    assert error["type"] == "server_error" and setting in error["message"]
    start = next(m for m in call.sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    assert 1 <= int(headers["retry-after"]) <= 5
    assert "x-should-retry" not in headers and headers["x-request-id"].startswith("req_")
    assert _overloaded(bound) == before + 1


def test_a_call_past_the_open_calls_is_refused_at_once_and_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """/metrics is not counted: scrapers see the load."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=1)
        streamed = _Call(app, _body(stream=True))
        held = asyncio.create_task(streamed.run())
        await streamed.answering.wait()
        await _refused_unread(app, "calls", "LLMQ_API_OPEN_CALLS")
        scraped = _Call(app, b"", path="/metrics/")
        scraped.scope["method"] = "GET"
        assert await scraped.run() == 200
        streamed.leave.set()
        assert await held == 200

    asyncio.run(main())


@pytest.mark.parametrize("ending", ["answered", "refused", "failed", "left mid-stream"])
def test_a_calls_place_is_given_back_however_it_ends(
    monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    """With room for one call: the next is answered once this one ended (a whole answer; a
    400 of the route; a 500, the app raising; a stream whose client went away)."""
    client = Client()

    async def main() -> None:
        app = _app(monkeypatch, client, calls=1)
        if ending == "answered":
            assert await _Call(app, _body()).run() == 200
        elif ending == "refused":
            assert await _Call(app, b"{not json").run() == 400
        elif ending == "failed":
            client.broken = True
            with pytest.raises(RuntimeError, match="the producer failed"):
                await _Call(app, _body()).run()
            client.broken = False
        else:
            streamed = _Call(app, _body(stream=True))
            held = asyncio.create_task(streamed.run())
            await streamed.answering.wait()
            streamed.leave.set()
            assert await held == 200
        assert await _Call(app, _body()).run() == 200

    asyncio.run(main())


@pytest.mark.parametrize(
    "sent", [{"content-length": str(MAX_JSON_BYTES)}, {"transfer-encoding": "chunked"}]
)
def test_a_call_past_the_bytes_of_the_bodies_being_read_is_refused(
    monkeypatch: pytest.MonkeyPatch, sent: dict[str, str]
) -> None:
    """Room for one largest body: while one of 8 MiB (or chunked, of a length not known) is
    being read, a call of two bytes is refused; once its client went away mid-body, one is
    answered."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=10, body_bytes=MAX_JSON_BYTES)
        reading = _Call(app, None, sent)
        held = asyncio.create_task(reading.run())
        await reading.reading.wait()
        await _refused_unread(app, "bytes", "LLMQ_API_BODY_BYTES")
        reading.leave.set()
        await asyncio.gather(held, return_exceptions=True)  # the app raises ClientDisconnect
        assert await _Call(app, _body()).run() == 200

    asyncio.run(main())


def test_an_upload_being_read_holds_no_body_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload is spooled to disk as it comes: a few slow uploads of 8 MiB shut every other
    body out while they held LLMQ_API_BODY_BYTES."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=10, body_bytes=MAX_JSON_BYTES)
        uploading = _Call(app, None, path="/v1/files")
        uploading.scope["headers"] = [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", str(MAX_JSON_BYTES).encode()),
        ]
        held = asyncio.create_task(uploading.run())
        await uploading.reading.wait()
        assert await _Call(app, _body()).run() == 200
        uploading.leave.set()
        await asyncio.gather(held, return_exceptions=True)

    asyncio.run(main())


def _of(tenant: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


async def _hold(app: FastAPI, tenant: str | None, n: int) -> list[tuple[_Call, asyncio.Task[int]]]:
    """`n` streams of `tenant` (None: no key) held open, their first piece sent."""
    held = []
    for _ in range(n):
        streamed = _Call(app, _body(stream=True), None if tenant is None else _of(tenant))
        held.append((streamed, asyncio.create_task(streamed.run())))
        await streamed.answering.wait()
    return held


async def _leave(held: list[tuple[_Call, asyncio.Task[int]]]) -> None:
    for streamed, _ in held:
        streamed.leave.set()
    assert [await task for _, task in held] == [200] * len(held)


def test_a_tenant_holds_at_most_three_quarters_of_the_open_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Room for 4 calls: acme holds 3 streams open, and its next call is refused at once,
    unread, a 429 naming it that the SDK retries after its Retry-After; umbrella's is
    answered (acme used to hold every place, and every other tenant was refused)."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=4, keyed=True)
        held = await _hold(app, "acme", 3)
        before = _overloaded("tenant")
        refused = _Call(app, _body(), _of("acme"))
        assert await refused.run() == 429
        assert refused.reads == 0 and _overloaded("tenant") == before + 1
        error = json.loads(replied(refused.sent)[1])["error"]
        assert error["code"] == "rate_limited" and "tenant acme has 3" in error["message"]
        start = next(m for m in refused.sent if m["type"] == "http.response.start")
        assert 1 <= int(dict(start["headers"])[b"retry-after"]) <= 5
        assert await _Call(app, _body(), _of("umbrella")).run() == 200
        await _leave(held)
        assert await _Call(app, _body(), _of("acme")).run() == 200

    asyncio.run(main())


@pytest.mark.parametrize("keys", ["none", "one tenant's"])
def test_a_door_of_one_tenant_gives_it_every_place(
    monkeypatch: pytest.MonkeyPatch, keys: str
) -> None:
    """Without a tenants file every request is tenant default's; with keys of one tenant,
    every request is its own or refused (a 401): no share holds it back."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=4, keyed=keys != "none", tenants=1)
        held = await _hold(app, None if keys == "none" else "acme", 4)
        await _refused_unread(app, "calls", "LLMQ_API_OPEN_CALLS")
        await _leave(held)

    asyncio.run(main())


def test_a_tenant_holds_at_most_three_quarters_of_the_body_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Room for two largest bodies: while acme's is being read, its second is refused (a
    429), as its share is one and a half; umbrella's is read."""

    async def main() -> None:
        app = _app(monkeypatch, Client(), calls=10, body_bytes=2 * MAX_JSON_BYTES, keyed=True)
        largest = {"content-length": str(MAX_JSON_BYTES)}
        reading = _Call(app, None, {**largest, **_of("acme")})
        held = asyncio.create_task(reading.run())
        await reading.reading.wait()
        refused = _Call(app, None, {**largest, **_of("acme")})
        assert await refused.run() == 429 and refused.reads == 0
        assert (
            "the bodies of tenant acme" in json.loads(replied(refused.sent)[1])["error"]["message"]
        )
        assert await _Call(app, _body(), _of("umbrella")).run() == 200
        reading.leave.set()
        await asyncio.gather(held, return_exceptions=True)
        assert await _Call(app, _body(), _of("acme")).run() == 200

    asyncio.run(main())
