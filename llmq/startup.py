"""How a service starts, or refuses to in one line: its settings read from the environment,
its ports bound and Kafka reached before anything slow (a model) loads. A refusal
says what to fix, exits 2 for configuration and 1 for a dependency that does not answer (or
is not ready: its topics not created), and shows no traceback. So does a stop (Ctrl-C,
SIGTERM) while it starts, which exits 0."""

from __future__ import annotations

import asyncio
import itertools
import logging
import resource
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from prometheus_client import Counter, start_http_server
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from llmq.record_limits import RECORD_LIMIT, record_limit
from llmq.throttle import Throttle
from schemas.redact import describe, explain
from schemas.settings import ServiceSettings

CONFIGURATION, UNREACHABLE = 2, 1
"""Exit codes: a setting or file to fix; a dependency to bring up (or to point at)."""
BACKLOG = 2048
"""Connections a listening socket holds before a server accepts them (uvicorn's default)."""
KAFKA_WAIT_S = 30.0
"""How long the brokers have to answer the first bootstrap (a refused connection fails at once)."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)
T = TypeVar("T")


class StartError(Exception):
    """Why a service cannot start (its str), and the exit code that says which kind."""

    def __init__(self, why: str, code: int) -> None:
        super().__init__(why)
        self.code = code


def run(main: Callable[[], int], log: logging.Logger, service: str) -> int:
    """`main()`, or the line on `log` saying why `service` cannot start, and its exit code. A
    stop that comes before the service takes its signals itself (Ctrl-C, or SIGTERM, which
    ends the start as Ctrl-C does) is one line too, and exit 0, as the stop of a service
    that serves: the stop was asked for, and nothing failed."""
    try:
        with _interrupted_by_sigterm():
            return main()
    except StartError as exc:
        logging.basicConfig(format=LOG_FORMAT)  # for a refusal before the service's own
        log.error("cannot start %s: %s", service, exc)
        return exc.code
    except KeyboardInterrupt:
        logging.basicConfig(format=LOG_FORMAT)
        log.warning("%s stopped while starting", service)
        return 0


def read_settings(cls: type[S]) -> S:
    """The settings from the environment; StartError naming each wrong variable, not its value
    (it may be a password)."""
    try:
        return cls()
    except ValidationError as exc:
        raise StartError(settings_problem(cls, exc), CONFIGURATION) from None


def configured(read: Callable[[], T]) -> T:
    """What `read` loads from a file the settings name (the catalog, the tenants); StartError
    with its ValueError's reason."""
    try:
        return read()
    except ValueError as exc:
        raise StartError(str(exc), CONFIGURATION) from None


def log_to_stderr(level: str) -> None:
    """The services' log lines: time, level, logger, message; a warning that repeats for
    every record (a dependency away) once per llmq.throttle.EVERY_S."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(Throttle())
    logging.basicConfig(level=level, handlers=[handler])


def settings_problem(cls: type[BaseSettings], exc: ValidationError) -> str:
    """Each error as `VARIABLE: problem`, the variable as the environment spells it (a field
    read under an alias of its own is named by it)."""
    prefix = str(cls.model_config.get("env_prefix", ""))

    def variable(loc: tuple[str | int, ...]) -> str:
        name = str(loc[0]) if loc else ""
        return (prefix + name if name in cls.model_fields else name).upper() or "settings"

    return describe(exc, limit=exc.error_count(), where=variable)


def serve_metrics(settings: ServiceSettings) -> None:
    """Serve /metrics on LLMQ_METRICS_HOST:LLMQ_METRICS_PORT (nothing when the port is 0)."""
    if not settings.metrics_port:
        return
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
    except OSError as exc:
        where = f"{settings.metrics_host}:{settings.metrics_port}"
        why = f"cannot serve /metrics on {where} (LLMQ_METRICS_HOST, LLMQ_METRICS_PORT): {exc}"
        raise StartError(why, CONFIGURATION) from None


def at_zero(counter: Counter, *values: Iterable[object]) -> Counter:
    """`counter` with a child at 0 for each combination of label values: a child made at its
    first inc() starts at 1, which rate() and increase() take for no rise."""
    for labels in itertools.product(*values):
        counter.labels(*labels)
    return counter


def listen(host: str, port: int, names: str) -> socket.socket:
    """A socket listening on `host`:`port` (connections wait in its backlog until a server
    accepts them); StartError naming the settings (`names`) that chose it otherwise. It
    listens at once: a port only bound could still be taken by another SO_REUSEADDR socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        why = f"cannot listen on {address(host, port)} ({names}): {exc}"
        raise StartError(why, CONFIGURATION) from None
    return sock


def open_files(wanted: int, why: str) -> int:
    """Raise this process's limit of open files to its hard limit (a shell's or a unit's
    soft default, 1,024, is far below what a server's sockets need), and warn, naming `why`
    it wants `wanted`, where even that is less: past it the server cannot accept, and
    answers nobody, its health checks included. Returns the limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning(
            "open files are limited to %d, below the %d %s needs: past it no connection is "
            "accepted, health checks included (raise the hard limit: ulimit -Hn, LimitNOFILE=, "
            "docker --ulimit nofile=)",
            hard,
            wanted,
            why,
        )
    return hard


def address(host: str, port: int) -> str:
    """`host`:`port` as a URL writes it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reach_kafka(
    settings: ServiceSettings,
    client_id: str,
    wait_s: float = KAFKA_WAIT_S,
    *,
    limits_of: Sequence[str] = (),
    partitioned: Mapping[str, int] | None = None,
    needs: Sequence[str] = (),
) -> dict[str, int]:
    """Return once a broker answers with these credentials; StartError naming where and how it
    tried otherwise. Runs on a loop of its own, leaving the caller's (faust's) unset. Returns
    the most bytes one record may have on each topic of `limits_of` (RECORD_LIMIT, with a
    warning, where the brokers will not say: no such topic yet, or no right to describe it).
    A topic of `partitioned` that exists with another partition count than its own is a
    StartError (a missing one is made by the service); so is a topic of `needs` missing (a
    client of the service's own would have the broker auto-create it with its defaults)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:  # not set as current
        return runner.run(
            _bootstrap(
                settings,
                client_id,
                wait_s,
                limits_of=limits_of,
                partitioned=partitioned or {},
                needs=needs,
            )
        )


async def _bootstrap(
    settings: ServiceSettings,
    client_id: str,
    wait_s: float,
    *,
    limits_of: Sequence[str],
    partitioned: Mapping[str, int],
    needs: Sequence[str],
) -> dict[str, int]:
    try:
        security = settings.kafka_security().client_kwargs()
    except OSError as exc:  # ssl.SSLError too: a CA, certificate or key that does not load
        why = f"cannot use the TLS files of LLMQ_KAFKA_SSL_*: {explain(exc)}"
        raise StartError(why, CONFIGURATION) from None
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, client_id=f"{client_id}-start", **security
    )
    try:
        with _said("aiokafka") as said:  # its reason (a login refused), not in the exception
            async with asyncio.timeout(wait_s):
                await admin.start()
        if partitioned or needs:  # every topic: naming some in the request would auto-create them
            described = await admin.describe_topics()
            # A setting to fix (exit 2) before topics to create (exit 1): creating them
            # would not start a service given another partition count.
            _same_partitions(partitioned, described)
            _present(needs, described, settings.kafka_bootstrap)
        limits = await asyncio.gather(*(_limit_of(admin, topic) for topic in limits_of))
        return dict(zip(limits_of, limits, strict=True))
    except TimeoutError:
        raise kafka_unreachable(settings, TimeoutError(f"no answer in {wait_s:g} s")) from None
    except (KafkaError, OSError) as exc:
        raise kafka_unreachable(settings, exc, said[-1] if said else None) from None
    finally:
        await admin.close()


def _present(needs: Sequence[str], described: Sequence[Mapping[str, Any]], where: str) -> None:
    """StartError naming the topics of `needs` that are not among those `described` by the
    brokers at `where`."""
    missing = sorted(set(needs) - {topic["topic"] for topic in described})
    if missing:
        raise StartError(
            f"topic(s) {', '.join(missing)} not found at {where}: create them with `llmq "
            "topics --create` first (a client naming them would have the broker auto-create "
            "them with its default partition count and replication factor)",
            UNREACHABLE,
        )


def _same_partitions(wanted: Mapping[str, int], described: Sequence[Mapping[str, Any]]) -> None:
    """StartError for the `described` topics whose partition count is not the one `wanted`."""
    other = {
        topic["topic"]: len(topic["partitions"])
        for topic in described
        if topic["topic"] in wanted and len(topic["partitions"]) != wanted[topic["topic"]]
    }
    if other:
        have = "; ".join(
            f"{name} has {count} partitions, not {wanted[name]}"
            for name, count in sorted(other.items())
        )
        raise StartError(
            f"{have}: a topic's count is fixed once it exists (adding partitions moves keys "
            "between them); set LLMQ_PARTITIONS to the count its topics have",
            CONFIGURATION,
        )


async def _limit_of(admin: AIOKafkaAdminClient, topic: str) -> int:
    """`topic`'s record limit; RECORD_LIMIT, with a warning, where the brokers will not say."""
    limit = None
    try:
        async with asyncio.timeout(KAFKA_WAIT_S):
            limit = await record_limit(admin, topic)
    except TimeoutError:
        log.warning("cannot read %s's max.message.bytes: no answer in %g s", topic, KAFKA_WAIT_S)
    if limit is None:
        log.warning("taking %d bytes as %s's record limit", RECORD_LIMIT, topic)
    return RECORD_LIMIT if limit is None else limit


def kafka_unreachable(
    settings: ServiceSettings, exc: BaseException, cause: str | None = None
) -> StartError:
    """The refusal for brokers that did not answer (`exc`, what happened instead, and the
    `cause` the client logged before it)."""
    what = str(exc) if isinstance(exc, KafkaError) else explain(exc)  # its str names its type
    what += f" ({cause})" if cause else ""
    where = f"{settings.kafka_bootstrap} ({settings.kafka_security().describe()})"
    why = (
        f"cannot reach Kafka at {where}: {what}; is it up, and are the LLMQ_KAFKA_* settings right?"
    )
    return StartError(why, UNREACHABLE)


def kafka_failed(settings: ServiceSettings, exc: KafkaError | RuntimeError) -> StartError:
    """The refusal for a service whose own Kafka clients failed as they started, after
    reach_kafka passed: the brokers lost or hung since (a KafkaError, or llmq.aio's
    RuntimeError around one), or a topic missing (llmq.tail's RuntimeError says which, and
    how to create it)."""
    cause = exc.__cause__ if isinstance(exc.__cause__, KafkaError | OSError) else exc
    if isinstance(cause, KafkaError | OSError):
        return kafka_unreachable(settings, cause)
    return StartError(str(exc), UNREACHABLE)


@contextmanager
def _interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile, as Ctrl-C does, unless it is ignored: its
    default action ended a service still starting without a word, and without running its
    `finally` blocks (a half-built checkpoint stayed)."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous != signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _said(name: str) -> Iterator[list[str]]:
    """What `name`'s logger warns of meanwhile, kept for the refusal instead of written."""
    logger = logging.getLogger(name)
    said: list[str] = []
    keep = _Keep(said)
    propagate, logger.propagate = logger.propagate, False
    logger.addHandler(keep)
    try:
        yield said
    finally:
        logger.removeHandler(keep)
        logger.propagate = propagate


class _Keep(logging.Handler):
    def __init__(self, said: list[str]) -> None:
        super().__init__(logging.WARNING)
        self._said = said

    def emit(self, record: logging.LogRecord) -> None:
        self._said.append(record.getMessage())
