"""Where llmq's time goes besides the engine, for ShareGPT prompts at once or one by one.

Against a running stack (`llmq local up`): sends N ShareGPT first turns at once (a fresh
tenant, temperature 0) and splits each result's end-to-end latency into engine time and
what llmq added: queue time (admitted by the stream processor -> started by the worker)
and the rest (the app -> admission, and the worker's end -> the app's result). Prints
percentiles. With --one-by-one it sends them one after another instead, so that each meets
a quiet stack and, from the second on, a semantic cache with entries in its scope.

    python -m tools.bench.pipeline_parts --requests 64
    python -m tools.bench.pipeline_parts --requests 32 --one-by-one
"""

from __future__ import annotations

import argparse
import uuid
from concurrent.futures import ThreadPoolExecutor

from llmq.client import Client
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from tools import sharegpt
from tools.stack.settings import LocalSettings

QUANTILES = (0.1, 0.5, 0.9, 0.99)


def parts(result: InferenceResult) -> dict[str, float]:
    """One result's latency split, in ms."""
    t = result.timings
    total, engine, queue = t.total_ms or 0.0, t.engine_ms or 0.0, t.queue_ms or 0.0
    rest = total - engine - queue
    return {"total": total, "engine": engine, "added": queue + rest, "queue": queue, "rest": rest}


def quantile(values: list[float], q: float) -> float:
    """The nearest-rank quantile: enough for a printout."""
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))]


def main() -> None:
    """Run one burst and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--one-by-one", action="store_true", help="each request after the last one's answer"
    )
    args = parser.parse_args()
    prompts = sharegpt.sample(
        args.requests, LocalSettings().cache_dir, seed=args.seed, max_tokens=args.max_tokens
    )
    tenant = f"parts-{uuid.uuid4().hex[:8]}"
    with Client(ServiceSettings()) as client:
        client.ask("Say hello.", tenant="parts-warmup", max_tokens=4, temperature=0.0)

        def submit(prompt: sharegpt.Prompt) -> str:
            return client.submit(
                prompt.text, tenant=tenant, max_tokens=prompt.reply_tokens, temperature=0.0
            )

        if args.one_by_one:
            split = [parts(client.result(submit(p), timeout=600)) for p in prompts]
        else:
            with ThreadPoolExecutor(len(prompts)) as pool:
                ids = list(pool.map(submit, prompts))
            split = [parts(client.result(cid, timeout=600)) for cid in ids]
    how = "one by one" if args.one_by_one else "at once"
    print(f"{len(split)} requests {how}; ms at p10 / p50 / p90 / p99")
    for name in ("total", "engine", "added", "queue", "rest"):
        values = [s[name] for s in split]
        print(f"  {name:7s}" + "".join(f"{quantile(values, q):9.0f}" for q in QUANTILES))


if __name__ == "__main__":
    main()
