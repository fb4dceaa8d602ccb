"""`llmq local prepare | up | down | status [--json]`: the whole stack on this machine."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from tools.stack import MAX_STREAMS

if TYPE_CHECKING:  # imported when the command runs: the parser must stay light
    from tools.stack.stack import LocalStack


def register(sub: Any) -> None:
    """Add `local` to the `llmq` subcommands (argparse's private subparsers type)."""
    local = sub.add_parser(
        "local",
        help="run the whole stack on this machine",
        description="Run the whole stack on this machine: prepare (fetch the Kafka jars, "
        "prepare the models), up, down, status (exits 3 unless every component runs and is "
        "ready).",
    )
    local.add_argument("action", choices=["prepare", "up", "down", "status"])
    local.add_argument(
        "--json", action="store_true", help="status: each component, and each model's pool"
    )
    local.add_argument(
        "--brokers",
        type=int,
        choices=[1, 3],
        help="up: Kafka brokers, 1 (the default) or 3 (a cluster that survives the loss of "
        "one; LLMQ_BROKERS); a stack keeps the number it was made with",
    )
    local.add_argument(
        "--streams",
        type=int,
        choices=range(1, MAX_STREAMS + 1),
        metavar=f"1-{MAX_STREAMS}",
        help="up: stream-processor instances sharing the partitions (LLMQ_STREAMS)",
    )
    local.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Carry out one action; `status` exits 3 unless every component is ready."""
    from tools.stack.settings import LocalSettings  # noqa: PLC0415 -- when the command runs
    from tools.stack.stack import LocalStack  # noqa: PLC0415

    shape = {"brokers": args.brokers, "streams": args.streams}
    stack = LocalStack(LocalSettings(**{k: v for k, v in shape.items() if v is not None}))
    if args.action == "prepare":
        logging.getLogger("workers").setLevel(logging.INFO)
        stack.prepare()
    elif args.action == "up":
        stack.up()
        print(f"llmq is up; state and logs in {stack.settings.state_dir}")
    elif args.action == "down":
        stack.down()
    else:
        return _status(stack, as_json=args.json)
    return 0


def _status(stack: LocalStack, as_json: bool) -> int:
    rows = stack.status()
    pools = stack.pools()
    if as_json:
        doc = {
            "components": [asdict(r) for r in rows],
            "models": {m: {"running": r, "desired": d} for m, (r, d) in pools.items()},
        }
        print(json.dumps(doc, indent=2))
    else:
        print(f"{'component':<28}{'pid':>8}  {'ready':<6} endpoint")
        for row in rows:
            print(
                f"{row.name:<28}{row.pid or '-':>8}  {'yes' if row.ready else 'no':<6} "
                f"{row.endpoint}"
            )
        for model, (running, desired) in pools.items():
            wanted = "-" if desired is None else str(desired)
            print(f"pool {model}: {running} running, {wanted} desired")
    return 0 if all(r.ready for r in rows) else 3
