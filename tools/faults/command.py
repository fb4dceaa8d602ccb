"""`llmq faults`: its command line, and the run it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tools.faults.plan import SCENARIOS
from tools.stack.settings import LocalSettings

NAMES = tuple(SCENARIOS)


def register(sub: Any) -> None:
    """Add `faults` to the `llmq` subcommands (argparse's private subparsers type)."""
    faults = sub.add_parser(
        "faults",
        help="fault tests: kill, stop and poison parts of a local stack under load; "
        "count what was lost",
        description="Start a local stack of its own on free ports, and for each scenario run "
        "a real load, inject the fault, heal the stack and count every accepted request "
        "against its replies (lost, duplicates, conflicting duplicates, time to recover). "
        "Writes results.json, the report and the README's reliability section. Exits 1 when "
        "a request was lost or answered twice differently, or a scenario found a broken "
        "guarantee (findings that depend on the machine's timing are shown, not failed).",
    )
    faults.add_argument(
        "--only",
        nargs="+",
        choices=NAMES,
        metavar="NAME",
        help=f"run only these scenarios, in this order (default: all of {', '.join(NAMES)})",
    )
    faults.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        help="multiplies the load: request rates, copies and overload window (default 1)",
    )
    faults.add_argument(
        "--report",
        type=Path,
        default=Path("RELIABILITY.md"),
        help="the report file this run rewrites (default RELIABILITY.md)",
    )
    faults.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also replace the table between the faults markers in README.md (default: on)",
    )
    faults.add_argument(
        "--out",
        type=Path,
        default=Path("faults-results"),
        help="where results.json goes (default faults-results/)",
    )
    faults.add_argument(
        "--keep-state",
        action="store_true",
        help="keep the stack's temporary state directory (logs) after the run (kept anyway "
        "when a scenario failed)",
    )
    faults.set_defaults(func=run)


def _scale(text: str) -> float:
    value = float(text)
    if not 0.1 <= value <= 10:
        raise argparse.ArgumentTypeError(f"must be between 0.1 and 10, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    """Run the scenarios; 1 when any failed (see Outcome.failed)."""
    from tools.faults.runner import run_faults  # noqa: PLC0415 -- this command only

    names = list(dict.fromkeys(args.only or NAMES))
    written = run_faults(
        names,
        scale=args.scale,
        cache_dir=LocalSettings().cache_dir,
        report_path=args.report,
        out_dir=args.out,
        readme=Path("README.md") if args.readme else None,
        command=faults_command(args, names),
        say=lambda line: print(line, flush=True),
        keep_state=args.keep_state,
    )
    print(report_table(written.report))
    print(f"results: {written.results}")
    print(f"report: {written.report}" + (f"; README: {written.readme}" if written.readme else ""))
    if written.failed:
        print(
            "llmq faults: lost or conflicting replies, or a broken guarantee, in "
            f"{', '.join(written.failed)}",
            file=sys.stderr,
        )
        return 1
    return 0


def faults_command(args: argparse.Namespace, names: list[str]) -> str:
    """The command line that repeats this run."""
    words = ["llmq", "faults"]
    if list(names) != list(NAMES):
        words += ["--only", *names]
    return " ".join([*words, "--scale", f"{args.scale:g}"])


def report_table(report: Path) -> str:
    """The table of a written report, for the console."""
    lines = report.read_text(encoding="utf-8").splitlines()
    return "\n".join(line for line in lines if line.startswith("|"))
