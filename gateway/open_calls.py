"""The front door's bound on what it holds open at once: requests, and their bodies' bytes,
in all and for each tenant."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import metrics
from gateway.door import MAX_JSON_BYTES, ApiError, bearer_key
from schemas.errors import ErrorCode, LlmqError
from schemas.tenants import TenantPolicy

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
TENANT_SHARE = 0.75
"""The most of either bound one tenant's requests may hold (at least one largest body): a
tenant sending past the door's capacity leaves a quarter of it to the others, whose
requests were all refused while it held every place."""
UNKNOWN = ""
"""The share of requests without a key of the tenants file (each refused by its route, a
401): together, as one tenant."""


class OpenCalls:
    """ASGI middleware: a request is open from its arrival until the app has answered it
    (read, waited for, streamed to its end, failed, or its client gone); past `calls` open,
    or `body_bytes` of their bodies, one is refused at once, unread, with a 503 the SDK
    retries after its Retry-After. With keys of several tenants, one tenant past TENANT_SHARE
    of either is refused too, with a 429 naming it."""

    def __init__(self, app: ASGIApp, *, calls: int, body_bytes: int, policy: TenantPolicy) -> None:
        self._app = app
        self._calls, self._body_bytes = calls, body_bytes
        self._open, self._held = 0, 0
        self._tenant_calls = math.ceil(calls * TENANT_SHARE)
        self._tenant_bytes = max(math.ceil(body_bytes * TENANT_SHARE), MAX_JSON_BYTES)
        self._tenant_of: Callable[[Headers], str] | None = None
        if len(set(policy.api_keys.values())) > 1:  # else one tenant, whose is every place
            self._tenant_of = lambda headers: _tenant(policy, headers)
        self._opened: Counter[str] = Counter()
        self._bodies: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") in UNCOUNTED:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        spooled = (scope["method"], scope["path"].rstrip("/")) in SPOOLED
        size = 0 if spooled else _body_size(headers)
        tenant = None if self._tenant_of is None else self._tenant_of(headers)
        refused = self._refusal(size) or self._tenant_refusal(tenant, size)
        if refused is not None:
            await refused(scope, receive, send)
            return
        self._open, self._held = self._open + 1, self._held + size
        if tenant is not None:
            self._opened[tenant] += 1
            self._bodies[tenant] += size
        try:
            await self._app(scope, receive, send)
        finally:
            self._open, self._held = self._open - 1, self._held - size
            if tenant is not None:
                _take(self._opened, tenant, 1)
                _take(self._bodies, tenant, size)

    def _refusal(self, size: int) -> JSONResponse | None:
        """A 503 if the door is at either bound."""
        if self._open >= self._calls:
            return _refused("calls", f"it has {self._calls} requests open, its most")
        if self._held + size > self._body_bytes:
            held = f"the bodies of its open requests take {self._held} bytes"
            return _refused("bytes", f"{held}, and this one's {size} would pass its most")
        return None

    def _tenant_refusal(self, tenant: str | None, size: int) -> JSONResponse | None:
        """A 429 if `tenant` is at its share of either bound."""
        if tenant is None:
            return None
        who = f"tenant {tenant}" if tenant != UNKNOWN else "requests without a known API key"
        if self._opened[tenant] >= self._tenant_calls:
            held = f"{who} has {self._opened[tenant]} requests open"
        elif self._bodies[tenant] + size > self._tenant_bytes:
            held = f"the bodies of {who}'s open requests take {self._bodies[tenant]} bytes"
        else:
            return None
        metrics.OVERLOADED.labels("tenant").inc()
        why = (
            f"{held}, its most at once: three quarters of the front door's "
            "(LLMQ_API_OPEN_CALLS, LLMQ_API_BODY_BYTES), the rest kept for other tenants; "
            "try again shortly"
        )
        return _response(LlmqError(ErrorCode.RATE_LIMITED, why, _retry_after()), 429)


def _take(counts: Counter[str], tenant: str, n: int) -> None:
    """Take `n` from `tenant`'s count, forgetting a tenant at zero."""
    counts[tenant] -= n
    if counts[tenant] <= 0:
        del counts[tenant]


def _tenant(policy: TenantPolicy, headers: Headers) -> str:
    """The tenant of a request's API key, UNKNOWN without a known one."""
    key = bearer_key(headers)
    tenant = None if key is None else policy.tenant_of(key)
    return UNKNOWN if tenant is None else tenant


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
    return _response(LlmqError(ErrorCode.INTERNAL_ERROR, why, _retry_after()), 503)


def _retry_after() -> float:
    """Seconds to wait, at random (RETRY_AFTER_S)."""
    return random.uniform(0, RETRY_AFTER_S)


def _response(error: LlmqError, status: int) -> JSONResponse:
    """`error` answered in OpenAI's shape, with its Retry-After."""
    refused = ApiError(error, status)
    return JSONResponse(refused.body, refused.status, headers=refused.headers)
