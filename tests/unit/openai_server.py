"""A small in-test OpenAI-compatible server that injects faults, and the engine against it.

The happy path against a real vLLM server is in tests/integration/test_openai_engine.py;
with this one, unit tests cover what is sent, how events are read, and what a healthy
server never does: errors, resets, stalls, Retry-After.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pytest
from aiohttp import web

from schemas.catalog import ModelSpec
from schemas.errors import LlmqError
from schemas.request import ChatBody, ChatMessage
from schemas.retry import RetryPolicy
from workers.breaker import CircuitBreaker
from workers.engine import EngineStep
from workers.openai_engine import OpenAIEngine

Reply: TypeAlias = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY = ChatBody(messages=[ChatMessage(role="user", content="Say hi")], max_tokens=8)
FAST = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05, budget_s=10.0)


@dataclass
class Server:
    """Answers the n-th request with the n-th reply (the last one repeats); records what
    came (paths, headers with lower-case names)."""

    replies: list[Reply]
    paths: list[str] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a client went away in the middle of a stream."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.arrived.append(time.monotonic())
        self.paths.append(request.path)
        self.bodies.append(await request.json())
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        reply = self.replies[min(len(self.bodies), len(self.replies)) - 1]
        return await reply(request)


@asynccontextmanager
async def running(*replies: Reply) -> AsyncIterator[tuple[Server, str]]:
    """The server on a free loopback port, and its base URL."""
    server = Server(list(replies))
    app = web.Application()
    app.router.add_post("/v1/chat/completions", server.handle)
    app.router.add_post("/v1/completions", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield server, f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


def chunk(text: str = "", finish: str | None = None, logprob: float | None = None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    if logprob is not None:
        top = [{"token": text, "logprob": logprob, "bytes": None}, {"token": "?", "logprob": -9}]
        entry = {"token": text, "logprob": logprob, "bytes": None, "top_logprobs": top}
        choice["logprobs"] = {"content": [entry]}
    return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"


def text_chunk(text: str, finish: str | None = None) -> bytes:
    """A text completion's event with logprobs: the likeliest as a dict that holds the
    sampled token too (as vLLM sends them), one more than the two asked for."""
    likely = {"?": -2.0, text: -0.5, "!": -1.0}
    logprobs = {"tokens": [text], "token_logprobs": [-0.5], "top_logprobs": [likely]}
    choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
    return (
        b"data: "
        + json.dumps({"object": "text_completion", "choices": [choice]}).encode()
        + b"\n\n"
    )


def usage(prompt: int, completion: int, cached: object = None) -> bytes:
    counts: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion}
    if cached is not None:
        counts["prompt_tokens_details"] = {"cached_tokens": cached}
    return b"data: " + json.dumps({"choices": [], "usage": counts}).encode() + b"\n\n"


def stream(
    *events: bytes, delay_s: float = 0.0, done: bool = True, server: Server | None = None
) -> Reply:
    """An event stream; with `server`, a client that goes away mid-stream sets server.cut."""

    async def reply(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        try:
            for event in events:
                await resp.write(event)
                await asyncio.sleep(delay_s)
            if done:
                await resp.write(b"data: [DONE]\n\n")
        except ConnectionResetError:
            if server is not None:
                server.cut.set()
            raise
        return resp

    return reply


def ok(text: str = "Hi there", prompt: int = 7) -> Reply:
    words = text.split(" ")
    parts = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return stream(*(chunk(p) for p in parts), chunk(finish="stop"), usage(prompt, len(parts)))


def status(code: int, message: str = "boom", headers: dict[str, str] | None = None) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        body = {"error": {"message": message, "type": "Error", "code": code}}
        return web.json_response(body, status=code, headers=headers)

    return reply


def refusing(*fields: str, then: Reply) -> Reply:
    """As OpenAI's reasoning models: its 400, word for word, for the first of `fields` that a
    request holds; `then` for a request with none of them."""

    async def reply(request: web.Request) -> web.StreamResponse:
        sent = await request.json()
        for name in (f for f in fields if f in sent):
            hint = " Use 'max_completion_tokens' instead." if name == "max_tokens" else ""
            error = {
                "message": f"Unsupported parameter: '{name}' is not supported with this model."
                + hint,
                "type": "invalid_request_error",
                "param": name,
                "code": "unsupported_parameter",
            }
            return web.json_response({"error": error}, status=400)
        return await then(request)

    return reply


async def reset(request: web.Request) -> web.StreamResponse:
    """Drop the connection without an answer."""
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(0.05)
    return web.Response()


def slow(seconds: float, then: Reply) -> Reply:
    async def reply(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request)

    return reply


def spec(url: str, **fields: Any) -> ModelSpec:
    return ModelSpec(name="remote-model", engine="openai", url=url, **fields)


def engine(
    url: str, *, threshold: int = 50, retry: RetryPolicy = FAST, **kwargs: Any
) -> OpenAIEngine:
    breaker = CircuitBreaker(f"test-{url}", failure_threshold=threshold, cooldown_s=60.0)
    return OpenAIEngine(spec(url), retry=retry, breaker=breaker, **kwargs)


async def collect(
    eng: OpenAIEngine, body: ChatBody = BODY, deadline: float | None = None
) -> list[EngineStep]:
    try:
        return [step async for step in eng.generate("req-1", body, 1, deadline=deadline)]
    finally:
        await eng.abort_all()


async def failure(
    eng: OpenAIEngine, body: ChatBody = BODY, deadline: float | None = None
) -> LlmqError:
    with pytest.raises(LlmqError) as caught:
        await collect(eng, body, deadline)
    return caught.value
