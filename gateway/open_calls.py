"""The front door's bound on what it holds open at once: requests, and their bodies' bytes."""

from __future__ import annotations

import random

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics
from gateway.door import MAX_JSON_BYTES, ApiError
from schemas.errors import ErrorCode, LlmqError

SPOOLED = frozenset({("POST", "/v1/files")})
"""Routes whose body is spooled to disk as it comes, not held: their bytes are not counted
(a few slow uploads would otherwise shut every other body out)."""
UNCOUNTED = frozenset({"/healthz", "/metrics"})
"""Never refused: a probe refused under load would restart the door, cutting off every
stream it holds; a scraper should see the load."""
RETRY_AFTER_S = 5.0
"""A refused request is told to retry after 1 to this many seconds, at random: the SDK
waits a Retry-After exactly, with no jitter of its own, so a burst refused together would
come back together."""


class OpenCalls:
    """ASGI middleware: a request is open from its arrival until the app has answered it
    (read, waited for, streamed to its end, failed, or its client gone); past `calls` open,
    or `body_bytes` of their bodies, one is refused at once, unread, with a 503 the SDK
    retries after its Retry-After."""

    def __init__(self, app: ASGIApp, *, calls: int, body_bytes: int) -> None:
        self._app = app
        self._calls, self._body_bytes = calls, body_bytes
        self._open, self._held = 0, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in UNCOUNTED:
            await self._app(scope, receive, send)
            return
        spooled = (scope["method"], scope["path"].rstrip("/")) in SPOOLED
        size = 0 if spooled else _body_size(Headers(scope=scope))
        refused = None
        if self._open >= self._calls:
            refused = _refused("calls", f"it has {self._calls} requests open, its most")
        elif self._held + size > self._body_bytes:
            held = f"the bodies of its open requests take {self._held} bytes"
            refused = _refused("bytes", f"{held}, and this one's {size} would pass its most")
        if refused is not None:
            await refused(scope, receive, send)
            return
        self._open, self._held = self._open + 1, self._held + size
        try:
            await self._app(scope, receive, send)
        finally:
            self._open, self._held = self._open - 1, self._held - size


def _body_size(headers: Headers) -> int:
    """The bytes a request's body may take held whole: its Content-Length, up to
    MAX_JSON_BYTES (a route refuses a larger JSON body unread, and spools an upload as it
    comes); a body sent chunked, MAX_JSON_BYTES."""
    declared = headers.get("content-length", "")
    if declared.isdigit():
        return min(int(declared), MAX_JSON_BYTES)
    return MAX_JSON_BYTES if "transfer-encoding" in headers else 0


def _refused(bound: str, busy: str) -> JSONResponse:
    """The refusal of a request past `bound` (calls or bytes), counted: a 503 in OpenAI's
    shape, naming the setting of the bound."""
    metrics.OVERLOADED.labels(bound).inc()
    setting = {"calls": "LLMQ_API_OPEN_CALLS", "bytes": "LLMQ_API_BODY_BYTES"}[bound]
    why = f"the front door is busy: {busy} ({setting}); try again shortly"
    refused = ApiError(
        LlmqError(ErrorCode.INTERNAL_ERROR, why, random.uniform(0, RETRY_AFTER_S)), 503
    )
    return JSONResponse(refused.body, refused.status, headers=refused.headers)
