"""The `llmq costs` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis

from llmq.settings import ClientSettings
from schemas.redact import mask_url
from streams.rollups import KEEP_DAYS, hour_of, read
from tools.costs import experiment
from tools.costs.report import DIMENSIONS, as_json, group, hours, table

DAYS = 7
"""The days a report covers without --days or --since."""

T = TypeVar("T")


def register(sub: Any) -> None:
    """Add `costs` to the `llmq` subcommands (argparse's private subparsers type)."""
    costs = sub.add_parser(
        "costs",
        help="spend, tokens and savings per tenant, model, lane, cache outcome and day",
        description=(
            "Reads the stream processor's hourly cost rollups in Redis (LLMQ_REDIS_URL). "
            "count is generations (cache none) or answers served without one; saved is what "
            "the generations behind cached and coalesced answers cost."
        ),
    )
    costs.add_argument(
        "--days",
        type=_days,
        help=f"the last N UTC days (default {DAYS}, at most {KEEP_DAYS})",
    )
    costs.add_argument("--since", type=_day, help="first UTC day, YYYY-MM-DD")
    costs.add_argument("--until", type=_day, help="last UTC day (default today)")
    costs.add_argument("--tenant", help="only this tenant")
    costs.add_argument(
        "--experiment",
        metavar="NAME",
        help="compare the arms of this A/B test instead (all of its answers, with intervals)",
    )
    costs.add_argument(
        "--by",
        type=_dimensions,
        help=f"group by these, comma-separated (default and choices: {','.join(DIMENSIONS)})",
    )
    out = costs.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON instead of a table")
    out.add_argument("--plot", type=Path, metavar="PNG", help="also draw spend and savings here")
    costs.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the report (and draw it); 1 with a message when there is nothing to report."""
    if args.experiment:
        return _experiment(args)
    first, last = _span(args)
    now = hour_of(time.time())
    wanted = [hour for hour in hours(first, last) if hour <= now]
    if not wanted:
        raise ValueError(f"{_first_day(args, first)} is in the future")
    url = ClientSettings().redis_url
    read_hours = asyncio.run(_rollups(url, lambda client: read(client, wanted)))
    rows = [r for r in read_hours if args.tenant in {None, r.tenant}]
    by = list(DIMENSIONS) if args.by is None else args.by
    lines = group(rows, by)
    if args.json:
        print(json.dumps(as_json(lines, first, last), indent=2))
        return 0
    if not rows:
        who = f" of tenant {args.tenant}" if args.tenant else ""
        print(f"no metering{who} from {first} to {last} in {mask_url(url)}")
        return 1
    print(f"costs from {first} to {last} (UTC), by {', '.join(by)}")
    print(table(lines, by))
    if args.plot:
        from tools.costs.plot import plot  # noqa: PLC0415 -- matplotlib: only for a plot

        print(f"plot: {plot(rows, wanted, args.plot)}")
    return 0


def _span(args: argparse.Namespace) -> tuple[date, date]:
    """The report's first and last UTC day: from --days or --since (never both, as one would
    be dropped unseen), up to --until."""
    if args.days is not None and args.since is not None:
        raise ValueError("--days and --since both set the first day: give one of them")
    today = datetime.now(UTC).date()
    last = args.until or today
    first = args.since or last - timedelta(days=(args.days or DAYS) - 1)
    if first > last:
        until = f"--until {last}" if args.until is not None else f"today, {last}"
        raise ValueError(f"{_first_day(args, first)} is after {until}")
    kept = today - timedelta(days=KEEP_DAYS)
    # Each hour is a read: a typo's century would be millions of them. And an hour is kept
    # KEEP_DAYS from its end: by now the first hours of day `kept` are gone.
    if first <= kept:
        raise ValueError(
            f"{_first_day(args, first)} is not after {kept}: rollups are kept {KEEP_DAYS} days "
            f"from each hour's end, so the first whole day is {kept + timedelta(days=1)}"
        )
    return first, last


def _first_day(args: argparse.Namespace, first: date) -> str:
    """The report's first day in a message, as the options given set it."""
    if args.since is not None:
        return f"--since {first}"
    days = f"--days {args.days}" if args.days is not None else f"{DAYS} days by default"
    end = f"--until {args.until}" if args.until is not None else "today"
    return f"the report's first day {first} ({days} to {end})"


async def _rollups(url: str, reading: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """What `reading` gets from the rollups' Redis at `url`; RuntimeError naming it (its
    password masked) and LLMQ_REDIS_URL where it cannot be reached."""
    client = aioredis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    try:
        return await reading(client)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        where = mask_url(url)
        raise RuntimeError(
            f"the cost rollups (Redis at {where}, LLMQ_REDIS_URL) are unreachable: {exc}"
        ) from exc
    finally:
        await client.aclose()


def _dimensions(text: str) -> list[str]:
    by = [part.strip() for part in text.split(",") if part.strip()]
    wrong = [d for d in by if d not in DIMENSIONS]
    if wrong or len(set(by)) != len(by):
        raise argparse.ArgumentTypeError(
            f"--by takes distinct names of {', '.join(DIMENSIONS)}, not {text!r}"
        )
    return by


def _experiment(args: argparse.Namespace) -> int:
    """The arms of one experiment side by side."""
    options = ("plot", "tenant", "since", "until", "days", "by")
    given = [f"--{name}" for name in options if getattr(args, name) is not None]
    if given:  # an experiment's figures are of all its answers, in one row per arm
        raise ValueError(
            f"--experiment reads every answer of the test's whole life: not with {given[0]}"
        )
    url = ClientSettings().redis_url
    sums = asyncio.run(_rollups(url, lambda client: experiment.read(client, args.experiment)))
    reports = experiment.compare(sums)
    if args.json:
        print(json.dumps({"experiment": args.experiment, "arms": [asdict(r) for r in reports]}))
        return 0
    if not reports:
        print(f"no answers of experiment {args.experiment} in {mask_url(url)}")
        return 1
    print(f"experiment {args.experiment}: each figure with its 95% confidence interval")
    print(experiment.table(reports))
    return 0


def _day(text: str) -> date:
    """A UTC day for --since and --until."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day (YYYY-MM-DD)") from None


def _days(text: str) -> int:
    """A count of days for --days: 1 to KEEP_DAYS."""
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= days <= KEEP_DAYS:
        raise argparse.ArgumentTypeError(f"{days} is not a count of days from 1 to {KEEP_DAYS}")
    return days
