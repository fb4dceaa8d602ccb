"""`llmq local prepare | up | down | status`: the whole stack on this machine."""

from __future__ import annotations

import argparse
import logging
from typing import Any


def register(sub: Any) -> None:
    """Add `local` to the `llmq` subcommands (argparse's private subparsers type)."""
    local = sub.add_parser("local", help="run the whole stack on this machine")
    local.add_argument("action", choices=["prepare", "up", "down", "status"])
    local.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Carry out one action; `status` exits 3 unless every component is ready."""
    from tools.stack.stack import LocalStack  # noqa: PLC0415 -- only when the command runs

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
