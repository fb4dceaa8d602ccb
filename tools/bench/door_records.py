"""What a front door's reply reader spends on llmq.tokens: every door reads every stream of
the cluster, so its cost per record of another door's stream caps the cluster's streams,
and the streams it served stay at hand for their retention. No stack is needed: records as
a worker writes them are handed to an AsyncClient's reader.

Prints the time per record of streams served elsewhere (their key names an id not awaited
here: kept as they came) against records read with no key (parsed, as every record was
before keys were looked at), and the memory a door's ended streams hold while parsed and
once kept as records, each a ratio of its baseline measured in the same run.

    python -m tools.bench.door_records --records 100000 --streams 500
"""

from __future__ import annotations

import argparse
import asyncio
import time
import tracemalloc

from llmq import stream_logs
from llmq.aio import AsyncClient
from schemas.settings import ServiceSettings
from schemas.stream import TokenDelta

NO_REDIS = ServiceSettings(redis_url="redis://127.0.0.1:1/0")
TOKENS_PER_RECORD = 2
"""The tokens of a record at the workers' default pace (LLMQ_STREAM_INTERVAL_MS)."""


def record(correlation_id: str, seq: int, last: bool) -> bytes:
    """A record of a stream as a worker writes it: two tokens, the last with its finish."""
    delta = TokenDelta(
        correlation_id=correlation_id,
        tenant="default",
        generation=f"{correlation_id}-g",
        seq=seq,
        text=" word" * TOKENS_PER_RECORD,
        tokens=TOKENS_PER_RECORD,
        finish_reason="length" if last else None,
    )
    return delta.model_dump_json().encode()


def per_record_us(records: int, keyed: bool) -> float:
    """Microseconds a reader takes per record of streams nobody here awaits."""
    app = AsyncClient(NO_REDIS)
    feed = [(record(f"other-{i // 64}", i % 64, False), f"other-{i // 64}") for i in range(records)]
    start = time.perf_counter()
    for value, correlation_id in feed:
        app._on_delta(value, correlation_id.encode() if keyed else None)
    return (time.perf_counter() - start) / records * 1e6


async def held_mib(streams: int, length: int) -> tuple[float, float]:
    """MiB held by `streams` ended streams of `length` records each, read here to their end:
    parsed, then kept as records (after PARSED_AFTER_END_S)."""
    app = AsyncClient(NO_REDIS)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for i in range(streams):
            name = f"mine-{i}"
            reader = asyncio.create_task(_drain(app, name))
            await asyncio.sleep(0)
            for seq in range(length):
                app._on_delta(record(name, seq, seq == length - 1), name.encode())
            await reader
        parsed = tracemalloc.get_traced_memory()[0] - base
        stream_logs.PARSED_AFTER_END_S = -1.0  # as if they ended that long ago
        app._streams.prune()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    return parsed / 2**20, kept / 2**20


async def _drain(app: AsyncClient, correlation_id: str) -> None:
    async for _ in app.follow(correlation_id, wait_s=600):
        pass


def main() -> None:
    """Measure both, print a line each with its ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000, help="records of others' streams")
    parser.add_argument("--streams", type=int, default=500, help="ended streams served here")
    parser.add_argument("--length", type=int, default=250, help="records per stream served here")
    args = parser.parse_args()
    parsed_us, keyed_us = per_record_us(args.records, False), per_record_us(args.records, True)
    print(
        f"a record of another door's stream: {keyed_us:.2f} us by its key, "
        f"{parsed_us:.2f} us parsed ({keyed_us / parsed_us:.2f}x)"
    )
    parsed, kept = asyncio.run(held_mib(args.streams, args.length))
    print(
        f"{args.streams} ended streams of {args.length} records served here: {kept:.0f} MiB "
        f"as records, {parsed:.0f} MiB parsed ({kept / parsed:.2f}x)"
    )


if __name__ == "__main__":
    main()
