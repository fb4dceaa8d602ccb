"""The Batch API against the same lines sent one request each, and what a running batch does
to an interactive request's latency.

Against a running stack (`LLMQ_AUTOSCALE=false llmq local up`: one worker, as a second
on the same cores would only slow both): N short lines (unique prompts, greedy, exactly
--tokens tokens each, caches off: they could answer none, and the semantic cache's
embedding of every prompt would be measured instead of the queue) go once as one batch
through the front door, and once as N requests on the batch lane through Kafka, all at
once; each way's lines a second, and their ratio.
Interactive requests, one at a time, are timed on the idle stack and again while each way
runs. The report names the worker's LLMQ_LANE_YIELD_* settings from this process's
environment: start the stack with the same.

    python -m tools.bench.batch_api --lines 10000 [--record BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.aio import AsyncClient
from llmq.settings import ClientSettings
from schemas.lanes import Lane
from schemas.request import CacheMode
from schemas.settings import ServiceSettings
from tools.batch.client import BatchApi
from tools.bench.runner import machine, record_section
from tools.progress import Progress
from workers.settings import WorkerSettings

BEGIN = "<!-- batch-api: begin (written by `python -m tools.bench.batch_api`) -->"
END = "<!-- batch-api: end -->"
SEND_AT_ONCE = 500
"""Requests published before their acknowledgements are awaited (the requests way)."""


@dataclass
class Figures:
    """One run's measurements."""

    lines: int
    tokens: int
    batch_s: float
    requests_s: float
    batch_ok: int
    requests_ok: int
    idle_ms: list[float]
    busy_ms: dict[str, list[float]]
    """Interactive latencies while each way ran."""

    @property
    def ratio(self) -> float:
        """The batch's lines a second over the requests'."""
        return (self.lines / self.batch_s) / (self.lines / self.requests_s)

    def latency_ratio(self, way: str) -> float:
        return statistics.median(self.busy_ms[way]) / statistics.median(self.idle_ms)


def _body(question: str, tokens: int) -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": question}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
        "cache": CacheMode.OFF.value,
    }


def _question(tag: str, n: int) -> str:
    return f"Classify the sentiment of review {n}: 'It was fine.' ({tag})"


def run_batch(api: BatchApi, lines: int, tokens: int, probe: Any) -> tuple[float, int]:
    """Upload, run and wait for the batch (probing meanwhile); seconds and lines answered."""
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "lines.jsonl"
        with path.open("w") as file:
            for n in range(lines):
                line = {
                    "custom_id": f"{tag}-{n}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": _body(_question(tag, n), tokens),
                }
                file.write(json.dumps(line) + "\n")
        started = time.monotonic()
        batch = api.create(api.upload(path)["id"])
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(stop,), daemon=True)
    prober.start()
    with Progress(total=lines, desc="batch", unit="line") as bar:

        def seen(found: dict[str, Any]) -> None:
            counts = found["request_counts"]
            bar.n = counts["completed"] + counts["failed"]
            bar.refresh()

        done = api.wait(batch["id"], seen, poll_s=1.0)
    took = time.monotonic() - started
    stop.set()
    prober.join()
    return took, int(done["request_counts"]["completed"])


def run_requests(
    settings: ServiceSettings, lines: int, tokens: int, probe: Any
) -> tuple[float, int]:
    """The same number of lines as requests on the batch lane, sent at once (probing
    meanwhile); seconds and answers."""
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(stop,), daemon=True)
    prober.start()
    try:
        return asyncio.run(_requests(settings, lines, tokens))
    finally:
        stop.set()
        prober.join()


async def _requests(settings: ServiceSettings, lines: int, tokens: int) -> tuple[float, int]:
    tag = uuid.uuid4().hex[:8]
    async with AsyncClient(settings, tenant="bench-requests") as client:
        started = time.monotonic()
        ids: list[str] = []
        for first in range(0, lines, SEND_AT_ONCE):
            sends = [
                client.submit(
                    _question(tag, n),
                    lane=Lane.BATCH,
                    cache=CacheMode.OFF,
                    max_tokens=tokens,
                    temperature=0,
                    ignore_eos=True,
                )
                for n in range(first, min(lines, first + SEND_AT_ONCE))
            ]
            ids += await asyncio.gather(*sends)
        ok = 0
        for cid in Progress(ids, desc="requests", unit="line"):
            result = await client.result(cid, wait_s=3600)
            ok += result.status == "ok"
        return time.monotonic() - started, ok


async def interactive_ms(
    settings: ServiceSettings, tokens: int, until: threading.Event, most: int
) -> list[float]:
    """Interactive requests one at a time, half a second apart, until `until` is set or
    `most` were timed; each one's latency."""
    tag = uuid.uuid4().hex[:8]
    found: list[float] = []
    async with AsyncClient(settings, tenant="bench-interactive") as client:
        while not until.is_set() and len(found) < most:
            began = time.monotonic()
            cid = await client.submit(
                f"Say one word ({tag}-{len(found)}).",
                lane=Lane.INTERACTIVE,
                max_tokens=tokens,
                temperature=0,
                ignore_eos=True,
            )
            await client.result(cid, wait_s=600)
            found.append((time.monotonic() - began) * 1000)
            await asyncio.sleep(0.5)
    return found


def measure(args: argparse.Namespace) -> Figures:
    """Idle probes, the requests way, then the batch with probes while it runs."""
    settings = ClientSettings()
    key = None if settings.api_key is None else settings.api_key.get_secret_value()
    api = BatchApi(settings.api_url, key)
    idle = asyncio.run(interactive_ms(settings, args.tokens, threading.Event(), args.probes))
    busy: dict[str, list[float]] = {"requests": [], "batch": []}

    def prober(way: str) -> Any:
        def probe(stop: threading.Event) -> None:
            busy[way] = asyncio.run(interactive_ms(settings, args.tokens, stop, 10_000))

        return probe

    requests_s, requests_ok = run_requests(settings, args.lines, args.tokens, prober("requests"))
    batch_s, batch_ok = run_batch(api, args.lines, args.tokens, prober("batch"))
    return Figures(args.lines, args.tokens, batch_s, requests_s, batch_ok, requests_ok, idle, busy)


def _lane_settings() -> str:
    """The yield settings as this process's environment gives them: the stack's worker has
    the same only when it was started with that environment."""
    worker = WorkerSettings()
    return (
        f"LLMQ_LANE_YIELD_CAP={worker.lane_yield_cap:g}, "
        f"LLMQ_LANE_YIELD_HOLD_S={worker.lane_yield_hold_s:g}"
    )


def section(figures: Figures) -> str:
    """The BENCHMARKS.md section."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    f = figures
    p50 = statistics.median
    return "\n".join(
        [
            "## Batch API",
            "",
            f"Measured {when} on {machine()} with `python -m tools.bench.batch_api --lines "
            f"{f.lines} --tokens {f.tokens}` against `LLMQ_AUTOSCALE=false llmq local up` "
            "(one worker, SmolLM2-135M on the CPU): the same short lines (unique prompts, "
            f"greedy, exactly {f.tokens} tokens each, caches off) as one batch through the "
            "front door, and as requests on the batch lane through Kafka, all sent at once. "
            "Interactive requests, one at a time, were timed on the idle stack and while "
            "each way ran.",
            "",
            "| way | lines | answered | seconds | lines/s |",
            "|---|---:|---:|---:|---:|",
            f"| requests, batch lane | {f.lines} | {f.requests_ok} | {f.requests_s:.0f} | "
            f"{f.lines / f.requests_s:.1f} |",
            f"| Batch API | {f.lines} | {f.batch_ok} | {f.batch_s:.0f} | "
            f"{f.lines / f.batch_s:.1f} |",
            "",
            f"The batch ran at **{f.ratio:.2f}x** the requests' throughput (its upload and "
            "validation included).",
            "",
            "| interactive request | n | p50 ms | max ms |",
            "|---|---:|---:|---:|",
            f"| idle stack | {len(f.idle_ms)} | {p50(f.idle_ms):.0f} | {max(f.idle_ms):.0f} |",
            *(
                f"| while the {way} ran | {len(ms)} | {p50(ms):.0f} | {max(ms):.0f} |"
                for way, ms in (("requests", f.busy_ms["requests"]), ("batch", f.busy_ms["batch"]))
            ),
            "",
            f"An interactive request took **{f.latency_ratio('batch'):.2f}x** its idle p50 "
            f"while the batch ran ({f.latency_ratio('requests'):.2f}x while the requests "
            "did), with the worker's lane settings as the run's environment gave them "
            f"({_lane_settings()}); the aim is 1.5x.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--tokens", type=int, default=8, help="tokens generated per line")
    parser.add_argument("--probes", type=int, default=10, help="interactive requests idle")
    parser.add_argument("--record", type=Path, help="replace the Batch API section of this file")
    args = parser.parse_args()
    figures = measure(args)
    text = section(figures)
    print(text)
    if args.record:
        record_section(args.record, text, BEGIN, END)


if __name__ == "__main__":
    main()
