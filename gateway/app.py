"""The front door's ASGI app: the routes, /metrics, and the clients its lifespan runs."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import make_asgi_app
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.batch.routes import router as batch_router
from gateway.door import AWAY_RETRY_S, ApiError, FrontDoor
from gateway.open_calls import OpenCalls
from gateway.openai import error_body
from gateway.routes import router
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.redact import explain
from schemas.tenants import TenantPolicy

log = logging.getLogger(__name__)

SERVED = (
    "/v1/chat/completions, /v1/completions, /v1/responses, /v1/models, /v1/files, "
    "/v1/batches and /v1/results"
)
"""The OpenAI-shaped paths the front door serves, named when a client asks for another."""
REDIS_AWAY = (RedisConnectionError, RedisTimeoutError, ReadOnlyError, OutOfMemoryError)
"""Redis out of reach, or refusing writes for a while (a replica during a failover, its
memory full): what waiting mends. Not its refusals of the door's password or rights, which
are ConnectionErrors too: those are 500s."""


def build(
    settings: GatewaySettings,
    catalog: Catalog,
    policy: TenantPolicy,
    *,
    exits_when_stuck: bool = False,
) -> FastAPI:
    """The app; its lifespan connects to Kafka and Redis before the first request, and ends
    the process where its close is stuck and it `exits_when_stuck` (FrontDoor)."""
    door = FrontDoor(settings, catalog, policy, exits_when_stuck=exits_when_stuck)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not door.ready:  # python -m gateway starts it first, to refuse in one line
            await door.start()
        try:
            yield
        finally:
            await door.close()

    app = FastAPI(title="llmq", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.door = door
    app.mount("/metrics", make_asgi_app())
    calls, body_bytes = settings.api_open_calls, settings.api_body_bytes
    app.add_middleware(OpenCalls, calls=calls, body_bytes=body_bytes, policy=policy)
    app.add_middleware(RequestIds)  # added last, outermost: a refusal of OpenCalls has an id
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    for status in (404, 405):  # the router's own: a status's handler takes them
        app.add_exception_handler(status, _not_routed)
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    for away in REDIS_AWAY:
        app.add_exception_handler(away, _redis_away)  # type: ignore[arg-type]
    for refused in (AuthenticationError, AuthorizationError):  # ConnectionErrors, not away
        app.add_exception_handler(refused, _failed)
    app.add_exception_handler(Exception, _failed)
    app.include_router(router)
    app.include_router(batch_router)
    return app


class RequestIds:
    """Gives every answer an X-Request-Id, as OpenAI's API does (the SDK keeps it: an
    error's `request_id`): a request's correlation id where its route set it, else one of
    its own (a refusal before the body was read)."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def identified(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-Id", new_request_id())
            await send(message)

        await self._app(scope, receive, identified)


def new_request_id() -> str:
    """An X-Request-Id for an answer that has no correlation id."""
    return f"req_{uuid.uuid4().hex}"


async def _api_error(_: Request, exc: ApiError) -> Response:
    return JSONResponse(exc.body, exc.status, headers=exc.headers)


async def _not_routed(request: Request, exc: Exception) -> Response:
    """The router's own refusals in OpenAI's shape: a path no route serves (an OpenAI
    endpoint llmq does not offer), 404, or a method its routes do not take, 405."""
    status: int = getattr(exc, "status_code", 404)
    where = f"{request.method} {request.url.path}"
    message, headers = f"the front door serves no {where}; it serves {SERVED}", {}
    if status == 405:
        path = request.url.path
        routes = [r for r in request.app.routes if isinstance(r, APIRoute)]
        taken = sorted({m for r in routes if r.path_regex.match(path) for m in r.methods})
        headers = {"Allow": ", ".join(taken)}
        message = f"{where} is not served: {path} takes {headers['Allow']}"
    _, body = error_body(ErrorCode.INVALID_REQUEST, message, status)
    return JSONResponse(body, status, headers=headers)


async def _invalid(_: Request, exc: RequestValidationError) -> Response:
    """A parameter that does not validate (a query's type, a missing form field): 400 in
    OpenAI's shape, without the value."""
    errors = exc.errors()
    parts = [f"{err['loc'][-1]} ({err['loc'][0]}): {err['msg']}" for err in errors]
    param = str(errors[0]["loc"][-1]) if errors else None
    status, body = error_body(ErrorCode.INVALID_REQUEST, "; ".join(parts), param=param)
    return JSONResponse(body, status)


async def _redis_away(request: Request, exc: RedisError) -> Response:
    """Redis away (REDIS_AWAY) where a route needs it (stored responses, results, batches):
    503, naming it, with Retry-After, which the SDK waits before it tries again. Why is a
    warning (one per interval: llmq.throttle), not answered: it names Redis's host."""
    state = "refusing writes" if isinstance(exc, ResponseError) else "out of reach"
    log.warning("Redis is %s: %s", state, explain(exc))
    why = f"Redis, where the front door keeps responses, results and batches, is {state}"
    away = LlmqError(ErrorCode.INTERNAL_ERROR, f"{why}; try again", AWAY_RETRY_S)
    return await _api_error(request, ApiError(away, 503))


async def _failed(_: Request, exc: Exception) -> Response:
    """Anything else: OpenAI's error body, 500, and the kind of failure (retrying may help);
    its message is logged with the request's id (X-Request-Id), not answered: it may name a
    host or a path."""
    request_id = new_request_id()
    log.error("request %s failed: %s", request_id, explain(exc), exc_info=exc)
    why = f"the front door failed: {type(exc).__name__}"
    status, body = error_body(ErrorCode.INTERNAL_ERROR, why)
    # Answered outside the middleware (Starlette's outermost): its id is given here.
    return JSONResponse(body, status, headers={"X-Request-Id": request_id})
