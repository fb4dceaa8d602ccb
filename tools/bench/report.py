"""What a benchmark run leaves behind: JSON with every sample, PNG plots, a Markdown section.

The plots are drawn on matplotlib Figures with the Agg canvas (no pyplot, no display, no
global state), so they can be made from any thread or process.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tools.bench.cpu import BENCH, OTHER, PARTS
from tools.bench.samples import WayResult
from tools.bench.stats import (
    BASELINES,
    BATCH_LANE,
    CACHE_HITS,
    COMPARED,
    INTERACTIVE_BUSY,
    INTERACTIVE_IDLE,
    PERCENTILES,
    Spread,
    Summary,
    added_by_the_door,
    lanes,
    ratios,
    repeated_ratios,
    summarize,
)
from tools.files import write_whole
from workers.settings import WorkerSettings

RATIO_LABELS = {
    "req_per_s": "requests/s",
    "output_tok_per_s": "output tokens/s",
    "ttft_p50_s": "TTFT p50",
    "latency_p50_s": "latency p50",
}
"""How the Markdown names the ratios of stats.RATIO_METRICS."""
NOT_THROUGHPUT = (CACHE_HITS, INTERACTIVE_IDLE, INTERACTIVE_BUSY)
"""Results left out of the throughput plot: cached answers a second would dwarf the
engines' bars, and interactive requests come one at a time."""


def write_json(
    results: Sequence[WayResult],
    meta: Mapping[str, object],
    path: Path,
    repeats: Sequence[dict[str, Summary]] = (),
) -> None:
    """Write `meta` (command, machine, date, settings ...), each way's summary, the ratios
    (over the `repeats` too, when the ways ran again) and every sample; atomically, so a
    reader never sees half a file. Values JSON has no type for (a Path in the settings) are
    written as strings."""
    summaries = {r.way: summarize(r) for r in results}
    doc = {
        "meta": dict(meta),
        "summaries": summaries,
        "ratios": ratios(summaries),
        "added_by_the_door_s": added_by_the_door(summaries),
        "lanes": lanes(summaries),
        "results": [asdict(r) for r in results],
    }
    if repeats:
        spreads = repeated_ratios(repeats)
        doc["repeats"] = {
            "summaries": list(repeats),
            "ratios": {key: asdict(spread) for key, spread in spreads.items()},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(path, json.dumps(doc, indent=1, ensure_ascii=False, default=str))


def plot(
    results: Sequence[WayResult], out_dir: Path, repeats: Sequence[dict[str, Summary]] = ()
) -> list[Path]:
    """throughput.png, latency.png and latency_cdf.png in `out_dir` (lanes.png with the
    lanes way, cores.png where the ways were metered, repeats.png where they ran again);
    their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ways = [r.way for r in results]
    summaries = [summarize(r) for r in results]
    paths = []

    served = [(w, s) for w, s in zip(ways, summaries, strict=True) if w not in NOT_THROUGHPUT]
    fig = Figure(figsize=(10, 4), layout="constrained")
    for ax, key, title in zip(
        fig.subplots(1, 2),
        ("req_per_s", "output_tok_per_s"),
        ("requests/s", "output tokens/s"),
        strict=True,
    ):
        _bars(ax, [w for w, _ in served], {title: [_num(s[key]) for _, s in served]})
        ax.set_title(f"throughput: {title} (higher is better)")
    paths.append(_save(fig, out_dir / "throughput.png"))

    fig = Figure(figsize=(12, 4), layout="constrained")
    for ax, name, title in zip(
        fig.subplots(1, 2), ("ttft", "latency"), ("time to first token", "end to end"), strict=True
    ):
        series = {f"p{q}": [_num(s[f"{name}_p{q}_s"]) for s in summaries] for q in PERCENTILES}
        _bars(ax, ways, series)
        ax.set_title(f"{title} (lower is better)")
        ax.set_ylabel("seconds")
    paths.append(_save(fig, out_dir / "latency.png"))

    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for label, latencies in _cdf_lines(results):
        xs = np.sort(np.asarray(latencies))
        ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("end-to-end latency, seconds (log scale)")
    ax.set_ylabel("share of requests answered")
    ax.set_title("latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths.append(_save(fig, out_dir / "latency_cdf.png"))
    by_way = {r.way: r for r in results}
    if INTERACTIVE_IDLE in by_way and INTERACTIVE_BUSY in by_way:
        paths.append(_lanes_plot(by_way, out_dir / "lanes.png"))
    metered = [r for r in results if r.cores]
    if metered:
        paths.append(_cores_plot(metered, out_dir / "cores.png"))
    throughput = {
        key: spread
        for key, spread in repeated_ratios(repeats).items()
        if key.endswith((" req_per_s", " output_tok_per_s"))
    }
    if throughput:
        paths.append(_repeats_plot(throughput, out_dir / "repeats.png"))
    return paths


def _repeats_plot(spreads: Mapping[str, Spread], path: Path) -> Path:
    """Each ratio (`spreads`, keyed as stats.ratios) over the runs: every run's value, and
    their mean with its 95% interval, against 1 (as fast as the baseline)."""
    fig = Figure(figsize=(max(7.0, 1.6 * len(spreads) + 2), 4.5), layout="constrained")
    ax = fig.subplots()
    labels = []
    for x, (key, spread) in enumerate(spreads.items()):
        ax.plot([x] * len(spread.values), spread.values, "o", color="grey", alpha=0.6)
        below, above = spread.mean - spread.low, spread.high - spread.mean
        ax.errorbar([x], [spread.mean], yerr=[[below], [above]], fmt="D", capsize=8, color="C0")
        pair, _, metric = key.partition(" ")
        labels.append(f"{pair.replace('/', ' ÷ ')}\n{RATIO_LABELS[metric]}")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    ax.set_ylabel("ratio (1: as fast as the baseline)")
    runs = len(next(iter(spreads.values())).values)
    ax.set_title(f"{runs} runs: each one (grey), their mean and its 95% interval (blue)")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def _cores_plot(results: Sequence[WayResult], path: Path) -> Path:
    """One stacked bar per way: the cores each part of the machine kept busy."""
    fig = Figure(figsize=(10, 0.6 * len(results) + 1.8), layout="constrained")
    ax = fig.subplots()
    names = [r.way for r in results]
    left = np.zeros(len(results))
    for key in _parts(results):
        widths = np.asarray([r.cores.get(key, 0.0) for r in results])
        ax.barh(names, widths, left=left, label=key)
        left += widths
    ax.invert_yaxis()
    ax.set_xlabel("cores busy on average while the way ran (CPU seconds ÷ wall seconds)")
    ax.set_title("where the machine's cores went")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def _parts(results: Sequence[WayResult]) -> list[str]:
    """The parts any result metered at 0.01 cores or more, in the order of tools.bench.cpu."""
    seen = {key for r in results for key, cores in r.cores.items() if cores >= 0.01}
    return [key for key in (*PARTS, BENCH, OTHER) if key in seen]


def _lanes_plot(by_way: Mapping[str, WayResult], path: Path) -> Path:
    """Each interactive request's latency against when it was sent: on the idle stack, then
    behind the batch lane's backlog (whose answers are drawn as they came)."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    ax = fig.subplots()
    idle, busy = by_way[INTERACTIVE_IDLE], by_way[INTERACTIVE_BUSY]
    ax.plot(
        [s.sent_s for s in idle.samples], [s.latency_s for s in idle.samples], "o-", label="idle"
    )
    offset = idle.wall_s
    busy_ok = [s for s in busy.samples if s.ok]
    ax.plot(
        [offset + s.sent_s for s in busy_ok],
        [s.latency_s for s in busy_ok],
        "o-",
        label="behind the batch lane",
    )
    batch = by_way.get(BATCH_LANE)
    if batch is not None:
        done = sorted(offset + s.sent_s + s.latency_s for s in batch.samples if s.ok)
        twin = ax.twinx()
        twin.step(done, np.arange(1, len(done) + 1), where="post", color="grey", alpha=0.5)
        twin.set_ylabel("batch-lane requests answered", color="grey")
    ax.set_xlabel("seconds from the first interactive request")
    ax.set_ylabel("interactive latency, seconds")
    ax.set_title("interactive requests, idle and behind a batch-lane backlog")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, path)


def markdown(
    results: Sequence[WayResult],
    meta: Mapping[str, object],
    repeats: Sequence[dict[str, Summary]] = (),
) -> str:
    """A BENCHMARKS.md section: when, where and how it was measured, a table per way (cache
    figures where a way has any), llmq's ratios to the baselines (over the `repeats` too,
    when the ways ran again), and meta's notes."""
    summaries = {r.way: summarize(r) for r in results}
    settings = meta.get("settings")
    lines = [
        "## ShareGPT: llmq, the bare engine and vllm serve",
        "",
        f"Measured {meta.get('date', '(date unknown)')} on {meta.get('machine', '(unknown)')}"
        + (f", {meta['engine']}" if "engine" in meta else "")
        + ", with:",
        "",
        "```",
        str(meta.get("command", "llmq bench")),
        "```",
        "",
    ]
    if isinstance(settings, Mapping) and settings:
        lines += [*(f"- {k}: {v}" for k, v in settings.items()), ""]
    lines += [
        "| way | requests | errors | wall s | req/s | output tok/s "
        "| TTFT p50 / p90 / p99 ms | latency p50 / p90 / p99 ms | overhead p50 / p90 / p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for way, s in summaries.items():
        lines.append(
            f"| {way} | {s['requests']} | {s['errors']} | {_fmt(s['wall_s'], 1)} "
            f"| {_fmt(s['req_per_s'], 2)} | {_fmt(s['output_tok_per_s'], 1)} "
            f"| {_ms3(s, 'ttft')} | {_ms3(s, 'latency')} | {_ms3(s, 'overhead')} |"
        )
    cached = {w: s for w, s in summaries.items() if s["cache_hits"] or s["generations"]}
    if cached:
        lines += [
            "",
            "| way | answered from cache or coalesced | exact / paraphrase / ShareGPT repeats "
            "hit | hit latency p50 / p99 ms | generations | saved | cost $ | cost saved $ |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for way, s in cached.items():
            by_kind = " / ".join(
                f"{s[f'{k}_hits']} of {s[f'{k}_requests']}"
                for k in ("exact_repeat", "paraphrase", "sharegpt_repeat")
            )
            lines.append(
                f"| {way} | {s['cache_hits']} | {by_kind} "
                f"| {_ms(s['hit_latency_p50_s'])} / {_ms(s['hit_latency_p99_s'])} "
                f"| {_fmt(s['generations'], 0)} | {_fmt(s['generations_saved'], 0)} "
                f"| {_fmt(s['cost_usd'], 6)} | {_fmt(s['cost_saved_usd'], 6)} |"
            )
    pairs = [(w, b) for w in COMPARED for b in BASELINES if w in summaries and b in summaries]
    lines += _ratio_table(ratios(summaries), pairs)
    lines += _repeats_table(repeats, pairs)
    lines += _lanes_text(lanes(summaries))
    added = added_by_the_door(summaries)
    if added:
        lines += [
            "",
            "The front door adds to calling vLLM's server directly (gateway minus vllm-serve): "
            + ", ".join(
                f"{name} p{q} {_signed_ms(added.get(f'{name}_p{q}_s'))}"
                for name in ("ttft", "latency")
                for q in PERCENTILES
            )
            + ".",
        ]
    lines += _cores_table([r for r in results if r.cores])
    if meta.get("notes"):
        lines += ["", str(meta["notes"])]
    return "\n".join(lines) + "\n"


def _cores_table(results: Sequence[WayResult]) -> list[str]:
    """The cores each part of the machine kept busy while each way ran."""
    if not results:
        return []
    keys = _parts(results)
    return [
        "",
        "Cores busy while each way ran (CPU seconds ÷ wall seconds, from /proc): engine is "
        "vLLM's engine processes, the model's compute; bench is the app sending the load "
        "(in the engine way also vLLM's front-end, in-process).",
        "",
        "| way | " + " | ".join(keys) + " | all |",
        "|---|" + "---:|" * (len(keys) + 1),
        *(
            f"| {r.way} | "
            + " | ".join(_fmt(r.cores.get(key, 0.0), 2) for key in keys)
            + f" | {_fmt(sum(r.cores.values()), 2)} |"
            for r in results
        ),
    ]


def _ratio_table(found: dict[str, float], pairs: list[tuple[str, str]]) -> list[str]:
    """way / baseline per metric: above 1 is better for throughput, worse for latency."""
    if not found or not pairs:
        return []
    lines = [
        "",
        "| ratio | " + " | ".join(f"{w} ÷ {b}" for w, b in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for metric, label in RATIO_LABELS.items():
        cells = [_fmt(found.get(f"{w}/{b} {metric}"), 2) for w, b in pairs]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _repeats_table(
    repeats: Sequence[dict[str, Summary]], pairs: list[tuple[str, str]]
) -> list[str]:
    """Each ratio's mean over the repetitions with its 95% interval, then each one's value."""
    spreads = repeated_ratios(repeats)
    if not spreads or not pairs:
        return []
    lines = [
        "",
        f"The compared ways ran {len(repeats)} times in all (the first is the run above; "
        "reversed order every other time): each ratio's mean [95% interval, Student's t] and "
        "each run's value.",
        "",
        "| ratio | " + " | ".join(f"{w} ÷ {b}" for w, b in pairs) + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for metric, label in RATIO_LABELS.items():
        cells = []
        for w, b in pairs:
            spread = spreads.get(f"{w}/{b} {metric}")
            cells.append(
                "-"
                if spread is None
                else f"{spread.mean:.2f} [{spread.low:.2f}, {spread.high:.2f}]: "
                + ", ".join(f"{v:.2f}" for v in spread.values)
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _lanes_text(found: dict[str, float]) -> list[str]:
    """The lanes way in a sentence, with the worker's lane settings (the stack inherits
    this process's environment)."""
    if "interactive_p50_ratio" not in found:
        return []
    worker = WorkerSettings()
    batch = found.get("batch_over_llmq_output_tok_per_s")
    cost = (
        ""
        if batch is None
        else f"; the batch lane served {batch:.2f}x the output tokens/s of the llmq way (the "
        "standard lane, no interactive requests)"
    )
    return [
        "",
        f"Lanes: behind the batch lane's backlog an interactive request took "
        f"{found['interactive_p50_ratio']:.2f}x its idle latency at p50 and "
        f"{found.get('interactive_p99_ratio', float('nan')):.2f}x at p99{cost}, with "
        f"LLMQ_LANE_YIELD_CAP={worker.lane_yield_cap:g} and "
        f"LLMQ_LANE_YIELD_HOLD_S={worker.lane_yield_hold_s:g}.",
    ]


def _signed_ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1000:+.0f} ms"


def _cdf_lines(results: Sequence[WayResult]) -> list[tuple[str, list[float]]]:
    """One line per way of its answered requests; split into cache hits and generated
    answers where a way has both (the duplicate-heavy run)."""
    lines = []
    for r in results:
        ok = [s for s in r.samples if s.ok and s.latency_s > 0]
        hits = [s.latency_s for s in ok if s.cache != "none"]
        misses = [s.latency_s for s in ok if s.cache == "none"]
        if hits and misses:
            lines += [(f"{r.way}: cache hits", hits), (f"{r.way}: generated", misses)]
        elif ok:
            lines.append((r.way, hits or misses))
    return lines


def _bars(ax: Axes, ways: list[str], series: dict[str, list[float]]) -> None:
    """Grouped bars: one group per way, one bar per series, each labelled with its value."""
    width = 0.8 / len(series)
    for k, (name, values) in enumerate(series.items()):
        x = np.arange(len(ways)) + (k - (len(series) - 1) / 2) * width
        bars = ax.bar(x, values, width, label=name)
        labels = ["" if np.isnan(v) else f"{v:.3g}" for v in values]
        ax.bar_label(bars, labels=labels, fontsize=7)
    ax.set_xticks(np.arange(len(ways)), ways)
    ax.margins(y=0.2)  # room above the bars for their labels and the legend
    if len(series) > 1:
        ax.legend(loc="upper center", ncols=len(series))


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=110)
    return path


def _num(value: float | int | None) -> float:
    """A figure for a bar; NaN (no bar) where unknown."""
    return float("nan") if value is None else float(value)


def _fmt(value: float | int | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms(value: float | int | None) -> str:
    return "-" if value is None else f"{value * 1000:,.0f}"


def _ms3(s: Summary, name: str) -> str:
    """p50 / p90 / p99 of one series, in ms."""
    return " / ".join(_ms(s[f"{name}_p{q}_s"]) for q in PERCENTILES)
