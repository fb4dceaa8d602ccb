"""`python -m gateway`: serve OpenAI's chat-completions API over llmq until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys

import uvicorn
from aiokafka.errors import KafkaError
from fastapi import FastAPI

from gateway.app import build
from gateway.door import FrontDoor
from gateway.settings import GatewaySettings
from llmq import startup
from schemas.names import BATCH_RESULTS, CANCELS, REQUESTS, RESULTS, TOKENS

log = logging.getLogger("gateway")

TOPICS = (REQUESTS, CANCELS, RESULTS, TOKENS, BATCH_RESULTS)
"""Every topic the front door writes (requests, cancels) or reads (results, tokens, batch
replies): `llmq topics --create` makes them, with the plan's partition counts (a client
naming a missing one would have the broker make it with its own defaults, and the topics
job then refuses that count)."""
SERVER_FAILURE = "Exception in ASGI application"
"""How uvicorn's record of an exception its app raised begins (on uvicorn.error)."""
LOGGED = "llmq_logged"
"""The attribute marking an exception the front door logged (gateway.app's handler of a
failed request, with its request id)."""


def main() -> int:
    """Validate the settings, the catalog and the keys, bind the API port, reach Kafka (its
    TOPICS created) and start the door's clients before it serves; on SIGTERM stop taking
    requests and let open ones finish (LLMQ_DRAIN_TIMEOUT_S). The exit code (a refusal to
    start is one line: llmq.startup)."""
    return startup.run(_serve, log, "the front door")


def _serve() -> int:
    settings = startup.read_settings(GatewaySettings)
    startup.log_to_stderr(settings.log_level)
    catalog = startup.configured(settings.catalog)
    policy = startup.configured(settings.policy)
    startup.serve_metrics(settings)  # /metrics is on the API port too; this one is for scrapers
    # Each open call holds its client's socket, and a connection waits in the backlog or
    # idles between calls with one too; Kafka and Redis take a few hundred more at most.
    wanted = settings.api_open_calls + startup.BACKLOG + 512
    startup.open_files(wanted, "LLMQ_API_OPEN_CALLS and the listening backlog")
    sock = startup.listen(settings.api_host, settings.api_port, "LLMQ_API_HOST, LLMQ_API_PORT")
    startup.reach_kafka(settings, settings.instance_id, needs=TOPICS)
    app = build(settings, catalog, policy, exits_when_stuck=True)
    config = uvicorn_config(settings, app)
    with sock, asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(_start_and_serve(settings, app.state.door, uvicorn.Server(config), sock))
    log.info("front door stopped")
    return 0


def uvicorn_config(settings: GatewaySettings, app: FastAPI) -> uvicorn.Config:
    """uvicorn serving `app`, its records written by llmq's handler (log_to_stderr's: its
    format, its throttle), not by handlers of its own; no access log; and an exception the
    app logged not written a second time (_mark, _once)."""
    logging.getLogger("gateway.app").addFilter(_mark)
    logging.getLogger("uvicorn.error").addFilter(_once)
    return uvicorn.Config(
        app,
        log_config=None,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
        access_log=False,
        # Not uvloop (uvicorn's pick when installed): uvloop 0.23 swallows a cancellation that
        # lands while a connection opens, so a task cancelled in a Redis call's connect ran on
        # (the batch runner at a stop: the front door then never exited).
        loop="asyncio",
    )


def _mark(record: logging.LogRecord) -> bool:
    """Mark the exception a record logs as LOGGED (and keep the record)."""
    if record.exc_info and record.exc_info[1] is not None:
        with contextlib.suppress(AttributeError):  # one that takes none: uvicorn writes it too
            setattr(record.exc_info[1], LOGGED, True)
    return True


def _once(record: logging.LogRecord) -> bool:
    """Whether to keep a record: not uvicorn's SERVER_FAILURE of an exception LOGGED.
    Starlette's outermost middleware hands every exception a request raised to the app's
    handler, which logs it with the request's id, then raises it again for the server,
    which wrote the traceback a second time, without the time, logger or id. One it did
    not log (its handler failing too, a BaseException) is still written."""
    exc = record.exc_info[1] if record.exc_info else None
    return not (str(record.msg).startswith(SERVER_FAILURE) and getattr(exc, LOGGED, False))


async def _start_and_serve(
    settings: GatewaySettings, door: FrontDoor, server: uvicorn.Server, sock: socket.socket
) -> None:
    """Start the door's Kafka clients, then serve until SIGTERM (uvicorn's lifespan closes
    them). They start here, not in the lifespan: uvicorn reports a lifespan that fails
    with a traceback and exit code 3, not as a refusal."""
    try:
        await door.start()
    except (KafkaError, RuntimeError) as exc:  # Kafka lost since reach_kafka; a topic missing
        await door.close()
        raise startup.kafka_failed(settings, exc) from None
    policy = door.policy
    keys = f"{len(policy.api_keys)} API keys" if policy.api_keys else "no API keys: tenant default"
    where = startup.address(settings.api_host, settings.api_port)
    log.info("front door on http://%s (%s)", where, keys)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)  # the handler uvicorn puts back after its stop
    await server.serve(sockets=[sock])  # its host and port: the socket's, not config's


def _drained(signum: int, frame: object) -> None:
    """SIGTERM or SIGINT once uvicorn has stopped on it: nothing more to do. uvicorn raises
    the signal it took again after its drain; the default action then ended a clean stop
    with exit 143."""


if __name__ == "__main__":
    sys.exit(main())
