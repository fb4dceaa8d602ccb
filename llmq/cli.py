"""The `llmq` command: submit requests and read results. The tooling adds its other commands
through the `llmq.commands` entry points (pyproject.toml), so the client library does not
depend on it."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points

import redis
from kafka.errors import KafkaError
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from llmq.client import Client
from llmq.settings import ClientSettings
from llmq.startup import settings_problem
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.redact import explain
from schemas.request import DEFAULT_TENANT
from schemas.result import InferenceResult

COMMANDS = "llmq.commands"
"""The entry-point group of commands added by other packages: each names a function that
takes argparse's subparsers, adds its parser and sets `func`."""
TO_FIX = frozenset(
    {
        ErrorCode.INVALID_JSON,
        ErrorCode.INVALID_REQUEST,
        ErrorCode.PROMPT_TOO_LARGE,
        ErrorCode.ANSWER_TOO_LARGE,
        ErrorCode.UNSUPPORTED,
        ErrorCode.UNKNOWN_MODEL,
    }
)
"""The errors of a request to fix (the front door's 400 and 404): sent again as it is, it
fails the same way. The others are llmq's failures or limits, or a wait that ran out."""
READER_GONE = 128 + signal.SIGPIPE
"""The exit status when what read the output stopped reading (`llmq ... | head`): that of a
command the signal ended, as the shell and `set -o pipefail` know it."""
ENDING = (signal.SIGTERM, signal.SIGHUP)
"""Signals that end a command as Ctrl-C does, through every `finally` (a hang-up too: the
processes of a stack a command started run in sessions of their own, and stay up)."""
DESCRIPTION = (
    "Submit requests to llmq and read their results (submit, result), and run, measure and "
    "operate a stack of it ({tools}); each command has its own --help."
)
EXIT_STATUSES = (
    "Exit status: 0 when done; 1 when it failed, found nothing, or what it needs (Kafka, "
    "Redis, the front door) is unreachable or did not answer in time; 2 for an argument, "
    "setting or request to fix (a result whose error is "
    f"{', '.join(sorted(TO_FIX))}); 3 from `local status` unless all of the stack runs and "
    "is ready; 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP; "
    f"{READER_GONE} when what reads its output stopped reading (| head)."
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
    """Entry point of the `llmq` console script. Output it can no longer write goes nowhere,
    without a traceback: where its reader went away (| head) it ends with READER_GONE; where
    its terminal hung up (EIO) with the status it had (129 once SIGHUP has ended it)."""
    try:
        try:
            return _main(argv)
        finally:  # a reader gone is found here, not as the interpreter exits (a traceback)
            if sys.stdout is not None:  # None: started without one (`>&-`), print()s dropped
                _flush()
    except BrokenPipeError:
        _to_nowhere()
        return READER_GONE


def _flush() -> None:
    """Write what is left for stdout; where its terminal hung up, drop it. A reader gone
    (BrokenPipeError) is main's to end the command with."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError:
        _to_nowhere()


def _to_nowhere() -> None:
    """As Python's documentation advises: what is left for stdout goes nowhere (not into a
    failure as the interpreter exits, status 120)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(argv: list[str] | None) -> int:
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
    except BrokenPipeError:  # the output's reader went away: main ends without a word
        raise
    except (RuntimeError, redis.RedisError, OSError) as exc:  # OSError: a file it cannot use
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad argument or setting (pydantic's errors among them)
        print(f"llmq: {_problem(exc)}", file=sys.stderr)
        return 2
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
    """Make SIGTERM and SIGHUP exit like Ctrl-C does, through every `finally`: a command that
    started a stack of its own (bench, faults) takes it down."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in ENDING:
        if signal.getsignal(signum) != signal.SIG_IGN:  # nohup's hang-up stays ignored
            signal.signal(signum, terminate)


@contextlib.contextmanager
def uninterrupted(what: str) -> Iterator[None]:
    """Run the block to its end through Ctrl-C, SIGTERM and SIGHUP, saying so; the first one
    held then takes effect, unless an exception already ends the command. For taking down a
    stack: its processes run in sessions of their own, so a teardown cut short leaves them
    running. On the main thread only, as any signal handler."""
    held: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if not held:  # os.write: a print here could land inside one of the block's
            line = f"llmq: {what} first (Ctrl-\\ quits at once, leaving it running)\n"
            with contextlib.suppress(OSError):  # a terminal hung up, a reader gone
                os.write(2, line.encode())
        held.append(signum)

    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, *ENDING)}
    for signum, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if held:
        signal.raise_signal(held[0])


def seconds(text: str) -> float:
    """A wait in seconds, 0 or more (0: look once)."""
    value = float(text)
    if not value >= 0:  # NaN too, which no deadline is ever past: a wait without end
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def parser() -> argparse.ArgumentParser:
    """The whole command line: this module's commands, then every registered one."""
    root = argparse.ArgumentParser(prog="llmq", epilog=EXIT_STATUSES)
    sub = root.add_subparsers(required=True, metavar="COMMAND")

    submit = sub.add_parser("submit", help="send a question; prints its correlation id")
    submit.add_argument("text", help="the question, as the user's message")
    submit.add_argument("--model", help="a catalog model (default: the catalog's default)")
    submit.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        help="most tokens of the answer (default: %(default)s)",
    )
    submit.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default: %(default)g)"
    )
    submit.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="the tenant it is sent as (default: %(default)s)"
    )
    submit.add_argument(
        "--lane",
        choices=[lane.value for lane in Lane],
        default=Lane.STANDARD.value,
        help="the lane it waits in (default: %(default)s)",
    )
    submit.add_argument("--wait", action="store_true", help="also wait for and print the answer")
    submit.add_argument(
        "--timeout",
        type=seconds,
        default=120.0,
        help="with --wait: seconds to wait for the answer (default: %(default)g)",
    )
    submit.add_argument(
        "--json",
        action="store_true",
        help="print the whole result as JSON (without --wait: its correlation_id)",
    )
    submit.set_defaults(func=_submit)

    result = sub.add_parser("result", help="print the result of a request by its correlation id")
    result.add_argument("correlation_id", help="as `llmq submit` printed it")
    result.add_argument(
        "--tenant", default=DEFAULT_TENANT, help="the request's tenant (default: %(default)s)"
    )
    result.add_argument(
        "--timeout",
        type=seconds,
        default=30.0,
        help="seconds to wait for it; 0 looks once (default: %(default)g)",
    )
    result.add_argument("--json", action="store_true", help="print the whole result as JSON")
    result.set_defaults(func=_result)

    for command in sorted(entry_points(group=COMMANDS), key=lambda e: e.name):
        try:
            register = command.load()
        except ImportError as exc:  # a broken install of one tool must not take the rest
            print(f"llmq: the {command.name!r} command is unavailable: {exc}", file=sys.stderr)
            continue
        register(sub)
    tools = [name for name in sub.choices if name not in ("submit", "result")]
    root.description = DESCRIPTION.format(tools=", ".join(tools))
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
            print(json.dumps({"correlation_id": cid}) if args.json else cid)
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
    if result.error is not None and result.error.code in TO_FIX:
        return 2
    return 0 if result.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
