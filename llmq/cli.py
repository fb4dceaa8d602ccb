"""The `llmq` command: submit requests and read results. The tooling adds its commands
(`local`, `topics`, `demo`, `bench`, `faults`) through the `llmq.commands` entry points, so
the client library does not depend on it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from importlib.metadata import entry_points

import redis
from kafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from llmq.client import Client
from llmq.settings import ClientSettings
from llmq.startup import settings_problem
from schemas.errors import LlmqError
from schemas.lanes import Lane
from schemas.redact import explain
from schemas.request import DEFAULT_TENANT
from schemas.result import InferenceResult

COMMANDS = "llmq.commands"
"""The entry-point group of commands added by other packages: each names a function that
takes argparse's subparsers, adds its parser and sets `func`."""
EXIT_STATUSES = (
    "Exit status: 0 when done; 1 when it failed, found nothing, or what it needs (Kafka, "
    "Redis, the front door) is unreachable or did not answer in time; 2 for an argument, "
    "setting or request to fix."
)

QUIET = {
    "kafka": logging.CRITICAL,
    "aiokafka": logging.CRITICAL,
    "llmq.record_limits": logging.ERROR,
}
"""Loggers kept quiet while a command runs: the Kafka clients' retries (the command says what
failed, in one line), and a record limit it could not read (a record too large is refused in
one line too)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmq` console script."""
    args = parser().parse_args(argv)
    exit_on_sigterm()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    quieted = {name: logging.getLogger(name).level for name in QUIET}
    for name, level in QUIET.items():
        logging.getLogger(name).setLevel(level)
    try:
        return _command(args)
    finally:  # as they were, for the process's later work (a test's, one calling main)
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)


def _command(args: argparse.Namespace) -> int:
    """The command; a failure is one line and the exit status (see EXIT_STATUSES)."""
    try:
        return int(args.func(args))
    except TimeoutError as exc:  # what it waited for did not come: not the input's fault
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except LlmqError as exc:  # a request llmq refuses as it is (too large a record)
        print(f"llmq: {exc.code.value}: {exc.message}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        where = ClientSettings().kafka_bootstrap
        print(
            f"llmq: cannot use Kafka at {where} ({exc}); is the stack up? (llmq local up)",
            file=sys.stderr,
        )
        return 1
    except (RuntimeError, redis.RedisError) as exc:
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad argument or setting (pydantic's errors among them)
        print(f"llmq: {_problem(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _problem(exc: ValueError) -> str:
    """A bad value's line: a setting's error names its environment variable (as the services'
    do), a request's its field, without the value (it may be a password or a prompt)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    settings = _settings_class(exc.title)
    return explain(exc) if settings is None else settings_problem(settings, exc)


def _settings_class(title: str) -> type[BaseSettings] | None:
    """The settings class of this name (a ValidationError's title), among those imported."""
    seen: list[type[BaseSettings]] = [BaseSettings]
    while seen:
        cls = seen.pop()
        if cls.__name__ == title:
            return cls
        seen.extend(cls.__subclasses__())
    return None


def exit_on_sigterm() -> None:
    """Make SIGTERM exit like Ctrl-C does, through every `finally`: a command that started a
    stack of its own (bench, faults) takes it down."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def parser() -> argparse.ArgumentParser:
    """The whole command line: this module's commands, then every registered one."""
    root = argparse.ArgumentParser(prog="llmq", description=__doc__, epilog=EXIT_STATUSES)
    sub = root.add_subparsers(required=True, metavar="COMMAND")

    submit = sub.add_parser("submit", help="send a question; prints its correlation id")
    submit.add_argument("text")
    submit.add_argument("--model", help="a catalog model (default: the catalog's default)")
    submit.add_argument("--max-tokens", type=int, default=128)
    submit.add_argument("--temperature", type=float, default=0.0)
    submit.add_argument("--tenant", default=DEFAULT_TENANT)
    submit.add_argument("--lane", choices=[lane.value for lane in Lane], default="standard")
    submit.add_argument("--wait", action="store_true", help="also wait for and print the answer")
    submit.add_argument("--timeout", type=float, default=120.0)
    submit.add_argument("--json", action="store_true", help="print the whole result as JSON")
    submit.set_defaults(func=_submit)

    result = sub.add_parser("result", help="print the result of a request by its correlation id")
    result.add_argument("correlation_id")
    result.add_argument("--tenant", default=DEFAULT_TENANT, help="the request's tenant")
    result.add_argument("--timeout", type=float, default=30.0)
    result.add_argument("--json", action="store_true", help="print the whole result as JSON")
    result.set_defaults(func=_result)

    for command in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        try:
            register = command.load()
        except ImportError as exc:  # a broken install of one tool must not take the rest
            print(f"llmq: the {command.name!r} command is unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    return root


def _submit(args: argparse.Namespace) -> int:
    with Client(ClientSettings(), listen=args.wait, tenant=args.tenant) as client:
        cid = client.submit(
            args.text,
            model=args.model,
            lane=Lane(args.lane),
            max_tokens=args.max_tokens,
            temperature=args.temperature,
        )
        if not args.wait:
            print(cid)
            return 0
        return _print(client.result(cid, timeout=args.timeout), args.json)


def _result(args: argparse.Namespace) -> int:
    with Client(ClientSettings(), listen=False, tenant=args.tenant) as client:
        client.ping_store()
        return _print(client.result(args.correlation_id, timeout=args.timeout), args.json)


def _print(result: InferenceResult, as_json: bool) -> int:
    if as_json:
        print(result.model_dump_json(indent=2))
    elif result.error is not None:
        print(f"error {result.error.code}: {result.error.message}", file=sys.stderr)
    else:
        t = result.timings
        usage = result.response.usage if result.response else None
        print(result.text)
        print(
            f"[{result.correlation_id} model={result.model_used} cache={result.cache} "
            f"tokens={usage.total_tokens if usage else '?'} total={t.total_ms or 0:.0f}ms]",
            file=sys.stderr,
        )
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
