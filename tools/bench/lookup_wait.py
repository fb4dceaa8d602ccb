"""How long a semantic lookup waits for its embedding while other questions are embedded.

The stream processor embeds through one EmbedQueue (streams/embed_queue.py): a lookup at
dedupe (an answer waits on it) and, in the background, the questions admission sends on
(embedded ahead) and the answers' questions to add. On a CPU machine the engine keeps the
cores busy, so `--burners` processes spin on them meanwhile. Short distinct questions are
looked up at Poisson arrivals of `--lookups` a second, first alone (the baseline of the
same run), then while ShareGPT first turns are embedded ahead at `--rate` a second; prints
each phase's lookup p50 / p90 / p99 and their ratio. No stack needed.

    python -m tools.bench.lookup_wait [--rate 2] [--lookups 8] [--burners 2] [--seconds 45]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from streams.embed_queue import EmbedQueue
from streams.embedder import Embedder
from tools import sharegpt
from tools.bench.pipeline_parts import quantile
from tools.stack.settings import LocalSettings

QUANTILES = (0.5, 0.9, 0.99)


def _spin() -> None:
    while True:
        pass


@contextmanager
def burners(n: int) -> Iterator[None]:
    """`n` processes keeping a core busy each while the block runs."""
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(n)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.join()


async def phase(
    queue: EmbedQueue,
    questions: Iterator[str],
    ahead_texts: list[str],
    *,
    rate: float,
    lookups: float,
    seconds: float,
) -> list[float]:
    """ms of each lookup in `seconds`, with `ahead_texts` embedded ahead at `rate`."""
    draw = random.Random(2)

    async def ahead() -> None:
        for text in itertools.cycle(ahead_texts):
            await asyncio.sleep(draw.expovariate(rate))
            queue.soon(text)

    background = asyncio.create_task(ahead()) if rate > 0 else None
    took = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            await asyncio.sleep(draw.expovariate(lookups))
            start = time.perf_counter()
            await queue.embed(next(questions), urgent=True)
            took.append(1000 * (time.perf_counter() - start))
    finally:
        if background:
            background.cancel()
    return took


def main() -> None:
    """Both phases on one embedder and queue; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2.0, help="texts ahead a second")
    parser.add_argument("--lookups", type=float, default=8.0, help="lookups a second")
    parser.add_argument("--burners", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--seconds", type=float, default=45.0, help="each phase")
    args = parser.parse_args()
    embedder = Embedder()
    questions = (f"What is {n} plus {n + 7}?" for n in itertools.count())
    texts = [p.text for p in sharegpt.sample(500, LocalSettings().cache_dir, seed=1)]

    async def run() -> dict[str, list[float]]:
        queue = EmbedQueue(embedder)
        await queue.embed("warm up", urgent=True)
        alone = await phase(
            queue, questions, texts, rate=0.0, lookups=args.lookups, seconds=args.seconds
        )
        busy = await phase(
            queue, questions, texts, rate=args.rate, lookups=args.lookups, seconds=args.seconds
        )
        return {"alone": alone, f"{args.rate:g}/s ahead": busy}

    with burners(args.burners):
        phases = asyncio.run(run())
    print(
        f"lookups of short questions ({embedder.precision}, {args.burners} cores kept busy); "
        "ms at p50 / p90 / p99"
    )
    for name, took in phases.items():
        cells = "".join(f"{quantile(took, q):8.1f}" for q in QUANTILES)
        print(f"  {name:12s}{cells}   ({len(took)} lookups)")
    alone, busy = phases.values()
    ratios = " / ".join(f"{quantile(busy, q) / quantile(alone, q):.2f}x" for q in QUANTILES)
    print(f"  ratio       {ratios}")


if __name__ == "__main__":
    main()
