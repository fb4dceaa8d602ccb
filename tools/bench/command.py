"""`llmq bench`: its command line, and the run it starts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tools import arguments
from tools.bench.ways import WAYS
from tools.stack.settings import LocalSettings

HIT_QUESTIONS = 16
"""The distinct questions the cache-hit run repeats."""


def register(sub: Any) -> None:
    """Add `bench` to the `llmq` subcommands (argparse's private subparsers type)."""
    bench = sub.add_parser(
        "bench",
        help="ShareGPT through the bare engine, vllm serve and llmq; figures into BENCHMARKS.md",
        description="Serve the same ShareGPT prompts with the same model and engine settings "
        "in several ways, one after another, and compare them; then a duplicate-heavy run "
        "through llmq. Writes JSON, PNG plots and Markdown to --out and replaces the "
        "generated section of --record.",
    )
    bench.add_argument(
        "--requests",
        type=arguments.positive_int,
        default=64,
        help="ShareGPT first turns (default 64)",
    )
    bench.add_argument(
        "--max-tokens",
        type=arguments.positive_int,
        default=64,
        help="cap on each answer's tokens; below it, the recorded answer's length (default 64)",
    )
    bench.add_argument(
        "--rate",
        type=arguments.positive_float,
        default=None,
        help="Poisson arrivals at this many requests/s (default: all at once)",
    )
    bench.add_argument(
        "--seed", type=int, default=0, help="picks the prompts and arrivals (default 0)"
    )
    bench.add_argument(
        "--ways",
        type=_ways,
        default=list(WAYS),
        help=f"comma-separated, run in this order (default {','.join(WAYS)})",
    )
    bench.add_argument(
        "--duplicates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run a duplicate-heavy workload through llmq: cache hits, generations and "
        "cost saved (default: on)",
    )
    bench.add_argument(
        "--exact-share",
        type=arguments.share,
        default=0.25,
        help="duplicate run: share of requests replaced by exact repeats (default 0.25)",
    )
    bench.add_argument(
        "--paraphrase-share",
        type=arguments.share,
        default=0.25,
        help="duplicate run: share of requests replaced by paraphrases (default 0.25)",
    )
    bench.add_argument(
        "--duplicate-rate",
        type=arguments.positive_float,
        default=4.0,
        help="duplicate run: Poisson arrivals per second; a repeat is a cache hit only once "
        "its original is answered, and is coalesced with it before (default 4)",
    )
    bench.add_argument(
        "--cache-hits",
        type=arguments.count,
        default=1000,
        help=f"also send this many exact repeats of {HIT_QUESTIONS} answered questions at "
        "once through llmq: exact-cache answers a second, end to end (default 1000; 0: off)",
    )
    bench.add_argument(
        "--repeat",
        type=arguments.positive_int,
        default=1,
        help="run the ways the ratios compare (engine, vllm-serve, llmq, gateway) this many "
        "times in all, in reversed order every other time, and report each ratio's mean and "
        "95%% interval: one run's ratio moves by about 0.15 on a busy 2-core machine "
        "(default 1)",
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="where results.json, results.md and the plots go (default bench-results/)",
    )
    bench.add_argument(
        "--record",
        type=Path,
        default=Path("BENCHMARKS.md"),
        help="the Markdown file whose generated section this run replaces (default BENCHMARKS.md)",
    )
    bench.set_defaults(func=run)


def _ways(text: str) -> list[str]:
    ways = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in ways if w not in WAYS]
    if unknown or not ways or len(set(ways)) != len(ways):
        raise argparse.ArgumentTypeError(
            f"want distinct ways out of {','.join(WAYS)}, got {text!r}"
        )
    return ways


def run(args: argparse.Namespace) -> int:
    """Build the workloads, run the ways, print and record the figures."""
    # Lazily: matplotlib (the `bench` extra) and the ways are needed by this command only.
    from tools.bench.runner import run_bench  # noqa: PLC0415
    from tools.bench.stats import BASELINES, COMPARED  # noqa: PLC0415
    from tools.bench.workload import build_workload, cache_hit_workload  # noqa: PLC0415

    if args.repeat > 1 and not (set(args.ways) & set(COMPARED) and set(args.ways) & set(BASELINES)):
        print(
            "llmq bench: --repeat repeats ratios: name one of llmq's ways (llmq, gateway) "
            "and a baseline (engine, vllm-serve) in --ways",
            file=sys.stderr,
        )
        return 2
    cache_dir = LocalSettings().cache_dir
    try:
        # No ShareGPT repeats: llmq would answer them without a generation, the engine not.
        workload = build_workload(
            args.requests,
            cache_dir,
            seed=args.seed,
            max_tokens=args.max_tokens,
            rate=args.rate,
            distinct=True,
        )
        duplicates = None
        if args.duplicates:
            duplicates = build_workload(
                args.requests,
                cache_dir,
                seed=args.seed,
                max_tokens=args.max_tokens,
                rate=args.duplicate_rate,
                exact_share=args.exact_share,
                paraphrase_share=args.paraphrase_share,
            )
        hits = cache_hit_workload(args.cache_hits, HIT_QUESTIONS) if args.cache_hits else None
        written = run_bench(
            args.ways,
            workload,
            args.out,
            cache_dir=cache_dir,
            record=args.record,
            command=bench_command(args),
            settings=_bench_settings(args),
            duplicates=duplicates,
            hits=hits,
            repeat=args.repeat,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"llmq bench: {exc}", file=sys.stderr)
        return 2
    print(written.markdown.read_text(encoding="utf-8"))
    print(f"results: {written.results}")
    print(f"plots: {', '.join(str(p) for p in written.plots)}")
    print(f"recorded in {written.record}")
    if written.failed:
        print(f"llmq bench: {written.failed} request(s) failed; see {written.results}")
        return 1
    return 0


def bench_command(args: argparse.Namespace) -> str:
    """The `llmq bench` command line that repeats this run's measurements, every value given."""
    words = [
        *("llmq", "bench", "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)),
        *(["--rate", f"{args.rate:g}"] if args.rate is not None else []),
        *("--seed", str(args.seed), "--ways", ",".join(args.ways)),
    ]
    if args.duplicates:
        words += [
            *("--exact-share", f"{args.exact_share:g}"),
            *("--paraphrase-share", f"{args.paraphrase_share:g}"),
            *("--duplicate-rate", f"{args.duplicate_rate:g}"),
        ]
    else:
        words.append("--no-duplicates")
    words += ["--cache-hits", str(args.cache_hits)]
    if args.repeat > 1:
        words += ["--repeat", str(args.repeat)]
    return " ".join(words)


def _bench_settings(args: argparse.Namespace) -> dict[str, object]:
    """The workload's settings, for the record."""
    settings: dict[str, object] = {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "arrivals": "all at once" if args.rate is None else f"Poisson {args.rate:g}/s",
        "seed": args.seed,
        "prompts": "distinct (ShareGPT's own repeats left out)",
    }
    if args.duplicates:
        settings["duplicate run"] = (
            f"exact {args.exact_share:g} + paraphrase {args.paraphrase_share:g} of requests, "
            f"Poisson {args.duplicate_rate:g}/s"
        )
    if args.cache_hits:
        settings["cache-hit run"] = (
            f"{args.cache_hits} exact repeats of {HIT_QUESTIONS} answered questions, all at once"
        )
    return settings
