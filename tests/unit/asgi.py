"""Driving the front door's app straight through ASGI, where a test needs what TestClient
hides: how much of a body the app read, or a client that leaves mid-answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from starlette.types import Message


def post_scope(app: Any, path: str, headers: Mapping[str, str]) -> dict[str, Any]:
    """The ASGI scope of a POST to `path` with `headers`, from a local client."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "app": app,
    }


def replied(sent: Sequence[Message]) -> tuple[int, bytes]:
    """The status and the whole body of the answer sent."""
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(
        m.get("body", b"") for m in sent if m["type"] == "http.response.body"
    )


def held_open(model: str, *, stream: bool, n: int) -> Callable[[], Awaitable[dict[str, Any]]]:
    """An ASGI receive: a chat call of `n` choices to `model`, then a client that never
    leaves."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "n": n}
    messages = [{"type": "http.request", "body": json.dumps({**body, "stream": stream}).encode()}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    return receive
