"""The `llmq` command: the local stack, submitting requests, reading results, the demo,
the benchmark (llmq/bench/command.py), the fault tests (llmq/faults/command.py)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import redis
from kafka.errors import KafkaError

from llmq import demo
from llmq.bench import command
from llmq.client import Client
from llmq.faults import command as faults
from llmq.settings import LocalSettings
from llmq.stack.stack import LocalStack, StackError
from schemas.lanes import Lane
from schemas.request import DEFAULT_TENANT
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmq` console script."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its retries; we say what failed
    try:
        return int(args.func(args))
    except StackError as exc:
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except TimeoutError as exc:
        print(f"llmq: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:
        where = _client_settings().kafka_bootstrap
        print(
            f"llmq: cannot use Kafka at {where} ({exc}); is the stack up? (llmq local up)",
            file=sys.stderr,
        )
        return 1
    except (RuntimeError, redis.RedisError) as exc:
        print(f"llmq: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmq", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    local = sub.add_parser("local", help="run the whole stack on this machine")
    local.add_argument("action", choices=["prepare", "up", "down", "status"])
    local.set_defaults(func=_local)

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

    run = sub.add_parser("demo", help="ShareGPT prompts through the local stack, with a report")
    run.add_argument("--prompts", type=int, default=48)
    run.add_argument("--repeats", type=int, default=16, help="prompts sent a second time")
    run.add_argument("--max-tokens", type=int, default=64)
    run.add_argument("--seed", type=int, default=0)
    run.set_defaults(func=_demo)

    command.register(sub)
    faults.register(sub)
    return parser


def _client_settings() -> ServiceSettings:
    """LLMQ_KAFKA_BOOTSTRAP / LLMQ_REDIS_URL when set, else the local stack's addresses."""
    local = LocalSettings()
    defaults = {
        "kafka_bootstrap": local.kafka_bootstrap,
        "redis_url": local.redis_url,
    }
    given = {k: v for k, v in defaults.items() if f"LLMQ_{k.upper()}" not in os.environ}
    return ServiceSettings().model_copy(update=given)


def _local(args: argparse.Namespace) -> int:
    stack = LocalStack()
    if args.action == "prepare":
        logging.getLogger("workers").setLevel(logging.INFO)
        stack.prepare()
    elif args.action == "up":
        stack.up()
        print(f"llmq is up; state and logs in {stack.settings.state_dir}")
    elif args.action == "down":
        stack.down()
    else:
        rows = stack.status()
        print(f"{'component':<24}{'pid':>8}  {'ready':<6} endpoint")
        for row in rows:
            print(
                f"{row.name:<24}{row.pid or '-':>8}  {'yes' if row.ready else 'no':<6} "
                f"{row.endpoint}"
            )
        return 0 if all(r.ready for r in rows) else 3
    return 0


def _submit(args: argparse.Namespace) -> int:
    with Client(_client_settings(), listen=args.wait, tenant=args.tenant) as client:
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
    with Client(_client_settings(), listen=False, tenant=args.tenant) as client:
        client.ping_store()
        return _print(client.result(args.correlation_id, timeout=args.timeout), args.json)


def _demo(args: argparse.Namespace) -> int:
    ok = demo.run(
        prompts=args.prompts, repeats=args.repeats, max_tokens=args.max_tokens, seed=args.seed
    )
    return 0 if ok else 1


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
