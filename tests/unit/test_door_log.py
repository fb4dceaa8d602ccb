"""The front door's log as `python -m gateway` writes it: uvicorn's records through llmq's
handler (its format and Throttle: a scanner's malformed requests were a warning each, in
uvicorn's own format), no access log, a request's failure once with its request id
(uvicorn wrote its traceback a second time, without time, logger or id), and a stalled
stream named by its request id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.types import Message

from gateway import __main__ as gateway_process
from gateway import sse
from gateway.app import build
from gateway.settings import GatewaySettings
from llmq import startup
from llmq.throttle import Throttle
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy

pytestmark = pytest.mark.timeout(30)

MALFORMED = b"NOT HTTP AT ALL\r\n\r\n"
FRESH = ("uvicorn", "uvicorn.error", "uvicorn.access", "gateway.app")
"""Loggers as a new process has them (another test's uvicorn may have configured them)."""
State = tuple[list[logging.Handler], bool, int, list[Any], bool]
"""A logger's handlers, propagate, level, filters and disabled."""


class Written(logging.Handler):
    """The front door's handler, as llmq.startup.log_to_stderr makes it (its format, its
    Throttle): the records it writes, each with its text."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(startup.LOG_FORMAT))
        self.addFilter(Throttle())
        self.lines: list[tuple[logging.LogRecord, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record, self.format(record)))

    def at(self, level: int) -> list[str]:
        return [text for record, text in self.lines if record.levelno == level]


@pytest.fixture
def written() -> Iterator[Written]:
    """The root logger's handler at INFO, as in `python -m gateway`; loggers put back after."""
    root, handler = logging.getLogger(), Written()
    kept = {name: _state(logging.getLogger(name)) for name in FRESH}
    level = root.level
    for name in FRESH:
        _restore(logging.getLogger(name), ([], True, logging.NOTSET, [], False))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        for name, state in kept.items():
            _restore(logging.getLogger(name), state)


def _state(logger: logging.Logger) -> State:
    return logger.handlers[:], logger.propagate, logger.level, logger.filters[:], logger.disabled


def _restore(logger: logging.Logger, state: State) -> None:
    logger.handlers[:], logger.propagate, level, logger.filters[:], logger.disabled = state
    logger.setLevel(level)


def _door() -> tuple[GatewaySettings, FastAPI]:
    """The app, with a route that fails as no route should."""
    settings = GatewaySettings()
    app = build(settings, Catalog.builtin(), TenantPolicy.load(None))

    async def broken() -> None:
        raise OSError("the disk is gone")

    app.add_api_route("/broken", broken)
    return settings, app


async def _served(settings: GatewaySettings, app: FastAPI, requests: list[bytes]) -> list[bytes]:
    """Each raw request's answer, on a connection of its own to `app` served by uvicorn as
    `python -m gateway` configures it, without the lifespan (it starts Kafka's clients)."""
    config = gateway_process.uvicorn_config(settings, app)
    config.lifespan = "off"
    server = uvicorn.Server(config)
    with startup.listen("127.0.0.1", 0, "a free port") as sock:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:  # noqa: ASYNC110 -- uvicorn's own flag
                await asyncio.sleep(0.01)
            return [await _exchange(sock.getsockname()[1], request) for request in requests]
        finally:
            server.should_exit = True
            await serving


async def _exchange(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    answer = await reader.read()
    writer.close()
    await writer.wait_closed()
    return answer


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: door\r\nConnection: close\r\n\r\n".encode()


def test_a_failed_request_is_logged_once_with_its_request_id(
    written: Written, capsys: pytest.CaptureFixture[str]
) -> None:
    settings, app = _door()
    (answer,) = asyncio.run(_served(settings, app, [_get("/broken")]))
    assert answer.startswith(b"HTTP/1.1 500 ")
    request_id = next(
        line.split(b":", 1)[1].strip().decode()
        for line in answer.split(b"\r\n")
        if line.lower().startswith(b"x-request-id:")
    )
    (error,) = written.at(logging.ERROR)
    assert f" ERROR gateway.app: request {request_id} failed: OSError: the disk is gone" in error
    assert "Traceback" in error
    assert "Exception in ASGI application" not in capsys.readouterr().err  # nor by uvicorn


def test_uvicorns_records_are_llmqs_throttled_and_without_an_access_log(
    written: Written,
) -> None:
    """A scanner's malformed requests: one warning in a Throttle's interval, not one each."""
    settings, app = _door()
    answers = asyncio.run(_served(settings, app, [MALFORMED, MALFORMED, _get("/v1/models")]))
    assert [answer.split(b"\r\n")[0] for answer in answers] == [
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 400 Bad Request",
        b"HTTP/1.1 200 OK",
    ]
    (warning,) = written.at(logging.WARNING)
    assert warning.endswith(" WARNING uvicorn.error: Invalid HTTP request received.")
    assert not [record for record, _ in written.lines if record.name == "uvicorn.access"]


def test_a_stalled_stream_is_named_by_its_request_id(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sse, "SEND_S", 0.01)

    async def events() -> AsyncGenerator[str]:
        yield sse.data({"n": 1})

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":  # its client takes nothing
            await asyncio.Event().wait()

    stream = sse.EventStream(events(), {"X-Request-Id": "chatcmpl-stalled"})
    with caplog.at_level(logging.WARNING, "gateway.sse"):
        asyncio.run(stream.stream_response(send))
    said = "stream chatcmpl-stalled: its client took no event for 0.01 s: ended as if it left"
    assert said in caplog.text
