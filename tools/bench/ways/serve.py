"""Way "vllm-serve": vLLM's OpenAI-compatible server driven by a streaming HTTP client, at
the same concurrency: what a user would run instead of llmq."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from schemas.catalog import ModelSpec
from schemas.retry import RetryPolicy
from tools.bench.samples import BenchRequest, WayResult
from tools.bench.ways import (
    Answered,
    Say,
    drive,
    log_tail,
    model,
    set_engine_env,
    stop_group,
    streamed,
)
from tools.stack.ports import free_block
from workers.engine_args import engine_kwargs
from workers.nice import nice_session, renice_below
from workers.openai_engine import OpenAIEngine
from workers.settings import WorkerSettings

WAY = "vllm-serve"
START_TIMEOUT_S = 300.0
READ_TIMEOUT_S = 600.0
"""Silence allowed between two bytes of a stream: a long queue on 2 cores is not a failure."""


def run(
    workload: list[BenchRequest],
    *,
    cache_dir: Path,
    answered: Answered = lambda: None,
    say: Say = lambda _: None,
) -> WayResult:
    """Start the server, warm it with one request (not measured), run, stop it."""
    spec, checkpoint = model(cache_dir)
    set_engine_env()
    with vllm_server(spec, checkpoint, say) as url:
        client = ModelSpec(
            name=spec.name,
            engine="openai",
            url=url,
            send_priority=True,
            max_inflight=spec.max_inflight,
        )
        return asyncio.run(_serve(client, workload, answered, say))


async def _serve(
    spec: ModelSpec, workload: list[BenchRequest], answered: Answered, say: Say
) -> WayResult:
    # One attempt per request: a benchmark reports failures instead of hiding them.
    engine = OpenAIEngine(
        spec,
        retry=RetryPolicy(max_attempts=1),
        send_priority=spec.send_priority,
        read_timeout_s=READ_TIMEOUT_S,
    )
    try:
        warm = await streamed(engine, BenchRequest(-1, "Say hello.", 8, 0.0), time.monotonic())
        if warm.error is not None:
            raise RuntimeError(f"the vLLM server failed the warm-up request: {warm.error}")
        say(f"{WAY}: warmed up; sending the workload")
        driven = await drive(workload, partial(streamed, engine), answered)
    finally:
        await engine.abort_all()
    return WayResult(WAY, driven.samples, driven.wall_s, cores=driven.cores)


@contextmanager
def vllm_server(
    spec: ModelSpec, checkpoint: Path, say: Say, env: dict[str, str] | None = None
) -> Iterator[str]:
    """`python -m vllm.entrypoints.openai.api_server` with the engine settings of the other
    ways (and of the worker); yields its base URL once healthy and stops it (its whole
    process group) after. Also the integration tests' second tier."""
    port = free_block(1)
    command = [
        *(sys.executable, "-m", "vllm.entrypoints.openai.api_server"),
        *serve_flags(_engine_kwargs(spec, checkpoint)),
        *("--disable-uvicorn-access-log", "--host", "127.0.0.1", "--port", str(port)),
    ]
    with tempfile.TemporaryDirectory(prefix="llmq-bench-serve-") as tmp:
        log_path = Path(tmp) / "server.log"
        say(f"{WAY}: starting vLLM's OpenAI server on port {port}")
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        try:
            _wait_healthy(proc, port, log_path)
            _renice_engine(proc.pid)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop_group(proc)


def _renice_engine(server: int) -> None:
    """On a CPU, the server's engine processes as nice as the worker makes its own, below
    the server's front end, and its session as nice as the worker's (workers/nice.py): the
    same engine settings as llmq's."""
    nice = WorkerSettings().engine_nice
    if nice and not _on_gpu():
        renice_below(server, nice)
        unchanged = nice_session(server, nice)
        if unchanged is not None:
            print(f"vllm-serve: its session keeps its CPU share ({unchanged})", file=sys.stderr)


def _engine_kwargs(spec: ModelSpec, checkpoint: Path) -> dict[str, Any]:
    """The worker's engine arguments (asking for a GPU the way VllmEngine does)."""
    share = WorkerSettings().gpu_memory_utilization
    return engine_kwargs(spec, checkpoint, on_gpu=_on_gpu(), gpu_memory_utilization=share)


def _on_gpu() -> bool:
    """Whether vLLM here runs on a GPU (as VllmEngine asks)."""
    import torch  # noqa: PLC0415 -- heavy: only to ask for a GPU

    on_gpu: bool = torch.cuda.is_available()
    return on_gpu


def serve_flags(kwargs: dict[str, Any]) -> list[str]:
    """Engine arguments as `vllm serve` flags: --name value, --flag / --no-flag for a
    bool, JSON for a table, one value after another for a list."""
    flags: list[str] = []
    for name, value in kwargs.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, dict):
            flags += [flag, json.dumps(value)]
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        elif value is not None:
            flags += [flag, str(value)]
    return flags


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"vLLM's OpenAI server exited while starting; its log ends:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"vLLM's OpenAI server was not healthy after {START_TIMEOUT_S:.0f} s; "
                f"its log ends:\n{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(1)
