"""What the semantic cache costs and how often it is wrong.

Measures (a) embedding latency per question (labelled questions, and ShareGPT first turns
as users write them, those the cache embeds) and the guard's per candidate, (b) lookup
latency at 10k and 100k entries in one scope (the labelled questions among random vectors,
so the guard runs), end to end through SemanticCache against a real redis-server and the
in-process search alone, with the memory a mirror takes (`--burners N`: while N processes
spin, as an engine keeps the cores busy), and (c) hit rate vs false-hit rate
across thresholds on tests/data/paraphrases.jsonl, with and without the (strict) guard. Prints
markdown tables and writes JSON.

    python -m tools.bench.semantic_cache [--out semantic-cache.json] [--sizes 10000 100000]
        [--burners 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from schemas.names import semantic_stream_key
from streams.embedder import DIMENSIONS, Embedder
from streams.question import unreadable
from streams.semantic import CANDIDATES, DEFAULT_THRESHOLD, MAX_TEXT_CHARS, SemanticCache
from streams.semantic_guard import same_question
from streams.semantic_index import ScopeMirror, Vector
from tools import sharegpt
from tools.bench.lookup_wait import burners
from tools.bench.semantic_quality import PRECISIONS
from tools.stack.settings import LocalSettings

PAIRS = Path(__file__).parents[2] / "tests" / "data" / "paraphrases.jsonl"
SHAREGPT_TURNS = 300
"""ShareGPT first turns sampled (seed 0) to time embedding; those the cache never embeds
(past MAX_TEXT_CHARS, or in words the guard cannot read) are not timed."""
THRESHOLDS = [round(0.70 + 0.02 * i, 2) for i in range(15)]  # 0.70 .. 0.98
FILL_BATCH = 1_000


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ms = np.array(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


async def timed_async(call: Callable[[], Awaitable[object]], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        await call()
        out.append(time.perf_counter() - start)
    return out


def embedding_latency(embedder: Embedder, questions: list[str]) -> dict[str, Any]:
    """One question per call, as a lookup embeds it (labelled questions, then ShareGPT first
    turns); and a batch of 32 per call."""
    timed(lambda: embedder.embed(questions[:1]), 10)  # warm up
    single = [timed(partial(embedder.embed, [q]), 1)[0] for q in questions]
    batch = timed(lambda: embedder.embed(questions[:32]), 5)
    turns = [
        p.text
        for p in sharegpt.sample(SHAREGPT_TURNS, LocalSettings().cache_dir, seed=0)
        if len(p.text) <= MAX_TEXT_CHARS and not unreadable(p.text)
    ]
    sharegpt_single = [timed(partial(embedder.embed, [t]), 1)[0] for t in turns]
    return {
        "single": percentiles(single),
        "batch32_ms_per_text": 1e3 * min(batch) / 32,
        "sharegpt": {"turns": len(turns), **percentiles(sharegpt_single)},
    }


def sweep(embedder: Embedder, pairs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Hit and false-hit rates per threshold: cached question `a`, asked `b`."""
    a = embedder.embed([p["a"] for p in pairs])
    b = embedder.embed([p["b"] for p in pairs])
    similarity = (a * b).sum(axis=1)
    same = np.array([p["same"] for p in pairs])
    guard = np.array([same_question(p["b"], p["a"]) for p in pairs])
    rows = []
    for threshold in THRESHOLDS:
        above = similarity >= threshold
        rows.append(
            {
                "threshold": threshold,
                "hit_rate": float(above[same].mean()),
                "false_hit_rate": float(above[~same].mean()),
                "hit_rate_guarded": float((above & guard)[same].mean()),
                "false_hit_rate_guarded": float((above & guard)[~same].mean()),
            }
        )
    return rows


def guard_cost(pairs: list[dict[str, Any]]) -> dict[str, float]:
    """The guard alone, once per labelled pair (a lookup runs it on each candidate, at most
    CANDIDATES)."""
    same_question("warm up", "the synonyms")  # loads WordNet
    return percentiles([timed(partial(same_question, p["b"], p["a"]), 1)[0] for p in pairs])


def choose_threshold(rows: list[dict[str, float]]) -> float:
    """The highest threshold with the best hit rate among those with no false hit."""
    safe = [r for r in rows if r["false_hit_rate_guarded"] == 0.0]
    best = max(r["hit_rate_guarded"] for r in safe)
    return max(r["threshold"] for r in safe if r["hit_rate_guarded"] == best)


def unit_vectors(n: int, seed: int) -> Vector:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIMENSIONS), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


async def fill(
    client: aioredis.Redis, scope: str, vectors: Vector, texts: list[str] | None = None
) -> None:
    """Write entries the way SemanticCache.add does, many per round trip."""
    key = semantic_stream_key(scope)
    for start in range(0, len(vectors), FILL_BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(start + FILL_BATCH, len(vectors))):
                fields: dict[FieldT, EncodableT] = {
                    "fp": f"{i:064x}",
                    "t": texts[i] if texts else f"synthetic question number {i}",
                    "v": vectors[i].astype("<f4").tobytes(),
                }
                pipe.xadd(key, fields)
            await pipe.execute()


async def index_size(
    client: aioredis.Redis, embedder: Embedder, n: int, questions: list[str]
) -> dict[str, Any]:
    """Lookup latency and memory with `n` entries in one scope: random unit vectors, and
    the labelled questions themselves, so that lookups find candidates for the guard."""
    scope = f"bench-{uuid.uuid4().hex}"
    vectors = np.concatenate([unit_vectors(n - len(questions), seed=n), embedder.embed(questions)])
    texts = [f"synthetic question number {i}" for i in range(n - len(questions))] + questions
    before = int((await client.info("memory"))["used_memory"])
    await fill(client, scope, vectors, texts)
    redis_bytes = int((await client.info("memory"))["used_memory"]) - before
    result: dict[str, Any] = {"entries": n, "redis_bytes": redis_bytes}

    def cache(refresh_s: float) -> SemanticCache:
        return SemanticCache(client, embedder, DEFAULT_THRESHOLD, max(n, 1), refresh_s)

    # 1) Cold: the first lookup of a process reads the whole scope from Redis.
    fresh = cache(5.0)
    start = time.perf_counter()
    await fresh.lookup(scope, questions[0])
    result["first_lookup_s"] = time.perf_counter() - start
    # 2) Warm lookups: embedding, search in a thread, the guard on each candidate (the
    # labelled questions find theirs); every lookup scans every entry.
    queries = iter(questions * 10)
    warm = await timed_async(lambda: fresh.lookup(scope, next(queries)), 200)
    result["lookup"] = percentiles(warm)
    # 3) Warm lookups that also ask Redis for new entries every time (refresh_s=0).
    eager = cache(0.0)
    await eager.lookup(scope, questions[0])
    result["lookup_refresh_every_call"] = percentiles(
        await timed_async(lambda: eager.lookup(scope, next(queries)), 200)
    )
    # 4) The in-process search alone, on the same vectors.
    mirror = ScopeMirror(n, DIMENSIONS)
    for i, vector in enumerate(vectors):
        mirror.put(f"{i:064x}", "", vector)
    probes = embedder.embed(questions[:50])
    result["search_only"] = percentiles(
        [
            timed(partial(mirror.search, p, DEFAULT_THRESHOLD, CANDIDATES), 1)[0]
            for p in np.concatenate([probes] * 4)
        ]
    )
    # 5) What a mirror of this scope keeps in memory, measured on another fresh cache.
    tracemalloc.start()
    measured = cache(5.0)
    await measured.lookup(scope, questions[0])
    result["mirror_bytes"] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    await client.delete(semantic_stream_key(scope))
    return result


@contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port, without persistence."""
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (deploy/install.sh installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def latency(url: str, embedder: Embedder, sizes: list[int], questions: list[str]) -> Any:
    client: aioredis.Redis = aioredis.Redis.from_url(url, socket_timeout=30)
    try:
        return [await index_size(client, embedder, n, questions) for n in sizes]
    finally:
        await client.connection_pool.disconnect()


def report(results: dict[str, Any]) -> str:
    """The markdown tables of docs/semantic-cache.md."""
    lines = ["| threshold | hit rate | false-hit rate | hit rate, guard | false-hit rate, guard |"]
    lines.append("|---|---|---|---|---|")
    for r in results["sweep"]:
        lines.append(
            f"| {r['threshold']:.2f} | {r['hit_rate']:.1%} | {r['false_hit_rate']:.1%} "
            f"| {r['hit_rate_guarded']:.1%} | {r['false_hit_rate_guarded']:.1%} |"
        )
    embed = results["embedding"]
    lines += [
        "",
        f"chosen threshold: {results['chosen_threshold']:.2f}; "
        f"pairs: {results['paraphrases']} paraphrases, {results['near_misses']} near-misses",
        f"embedding ({results['precision']}), one question: "
        f"p50 {embed['single']['p50_ms']:.1f} ms, "
        f"p99 {embed['single']['p99_ms']:.1f} ms; "
        f"in a batch of 32: {embed['batch32_ms_per_text']:.2f} ms a question; "
        f"a ShareGPT first turn ({embed['sharegpt']['turns']}): "
        f"p50 {embed['sharegpt']['p50_ms']:.1f} ms, p99 {embed['sharegpt']['p99_ms']:.1f} ms",
        f"the guard, one candidate: p50 {results['guard']['p50_ms']:.2f} ms, "
        f"p99 {results['guard']['p99_ms']:.2f} ms",
        "",
        f"lookups timed with {results['burners']} processes spinning",
        "",
        "| entries | lookup p50 / p99 ms | lookup, refresh each call | search only | "
        "first lookup s | mirror MB | Redis MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        lines.append(
            f"| {r['entries']:,} | {r['lookup']['p50_ms']:.1f} / {r['lookup']['p99_ms']:.1f} "
            f"| {r['lookup_refresh_every_call']['p50_ms']:.1f} / "
            f"{r['lookup_refresh_every_call']['p99_ms']:.1f} "
            f"| {r['search_only']['p50_ms']:.2f} / {r['search_only']['p99_ms']:.2f} "
            f"| {r['first_lookup_s']:.2f} | {r['mirror_bytes'] / 2**20:.0f} "
            f"| {r['redis_bytes'] / 2**20:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument(
        "--burners",
        type=int,
        default=0,
        help="processes kept spinning while lookups are timed (an engine's busy cores)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the embedder's (auto: bfloat16 where this CPU is faster at it)",
    )
    args = parser.parse_args()

    pairs = [json.loads(line) for line in PAIRS.read_text().splitlines()]
    questions = sorted({p[side] for p in pairs for side in ("a", "b")})
    embedder = Embedder(bf16=PRECISIONS[args.precision])
    rows = sweep(embedder, pairs)
    results: dict[str, Any] = {
        "precision": embedder.precision,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
        },
        "paraphrases": sum(p["same"] for p in pairs),
        "near_misses": sum(not p["same"] for p in pairs),
        "sweep": rows,
        "chosen_threshold": choose_threshold(rows),
        "embedding": embedding_latency(embedder, questions),
        "guard": guard_cost(pairs),
    }
    results["burners"] = args.burners
    with contextlib.ExitStack() as stack:
        url = args.redis_url or stack.enter_context(redis_server())
        stack.enter_context(burners(args.burners))
        results["sizes"] = asyncio.run(latency(url, embedder, args.sizes, questions))
    results["machine"]["load_average_at_end"] = os.getloadavg()
    print(report(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
