"""Way "engine": vLLM's AsyncLLM in-process, the engine's own ceiling.

It runs in a child process, `python -m tools.bench.ways.engine WORKLOAD RESULT CACHE_DIR`:
building the CPU engine rewrites its process's environment (LD_PRELOAD of tcmalloc and
libgomp, thread settings) and spawns the engine core, none of which may leak into the
processes of the ways measured after it. The child prints a line per answer (progress)
and writes its WayResult as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from tools.bench.samples import BenchRequest, Sample, WayResult
from tools.bench.ways import (
    ANSWERED,
    LANE,
    Answered,
    Reply,
    Say,
    body,
    drive,
    log_tail,
    model,
    set_engine_env,
    stop_group,
)
from workers.settings import WorkerSettings

if TYPE_CHECKING:  # torch and vLLM are imported by the child process only
    from workers.vllm_engine import VllmEngine

WAY = "engine"


def run(
    workload: list[BenchRequest],
    *,
    cache_dir: Path,
    answered: Answered = lambda: None,
    say: Say = lambda _: None,
) -> WayResult:
    """Serve the workload with AsyncLLM in a child process; its engine is gone on return."""
    with tempfile.TemporaryDirectory(prefix="llmq-bench-engine-") as tmp:
        folder = Path(tmp)
        requests, result, log_file = (
            folder / "workload.json",
            folder / "result.json",
            folder / "engine.log",
        )
        requests.write_text(json.dumps([asdict(r) for r in workload]), encoding="utf-8")
        # vLLM logs to stdout by default; stdout carries the child's progress lines.
        env = {**os.environ, "VLLM_LOGGING_STREAM": "ext://sys.stderr"}
        argv = [sys.executable, "-m", __name__, str(requests), str(result), str(cache_dir)]
        with log_file.open("wb") as log:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                text=True,
                start_new_session=True,
            )
            try:
                for line in proc.stdout or ():
                    text = line.rstrip("\n")
                    if text == ANSWERED:
                        answered()
                    elif text:
                        say(text)
                code = proc.wait()
            finally:
                stop_group(proc)
        if code != 0:
            raise RuntimeError(
                f"the engine way failed (exit {code}); its log ends:\n{log_tail(log_file)}"
            )
        return load_result(result)


def load_result(path: Path) -> WayResult:
    """A WayResult as the child process wrote it (dataclasses.asdict as JSON)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    samples = [Sample(**s) for s in data.pop("samples")]
    return WayResult(samples=samples, **data)


async def _answer(engine: VllmEngine, request: BenchRequest, sent: float) -> Reply:
    """Stream one generation; TTFT is the first step that carries tokens."""
    first: float | None = None
    prompt_tokens = output_tokens = 0
    async for step in engine.generate(f"bench-{request.index}", body(request), LANE.priority):
        if first is None and step.new_tokens:
            first = time.monotonic()
        prompt_tokens = step.prompt_tokens
        output_tokens += step.new_tokens
    return Reply(prompt_tokens, output_tokens, None if first is None else first - sent)


async def _serve(workload: list[BenchRequest], cache_dir: Path) -> WayResult:
    """Start the engine, warm it with one request (not measured), run, stop it."""
    from workers.vllm_engine import (  # noqa: PLC0415 -- torch and vLLM: child only
        VllmEngine,
        engine_args,
    )

    spec, checkpoint = model(cache_dir)
    print(f"engine: starting vLLM AsyncLLM in-process ({checkpoint.name})", flush=True)
    settings = WorkerSettings()
    args = engine_args(spec, checkpoint, settings.gpu_memory_utilization)
    # The worker's niceness too: the same engine settings, and this loop is the front end.
    engine = VllmEngine(spec, args, settings.engine_nice)
    try:
        warm = BenchRequest(-1, "Say hello.", 8, 0.0)
        await _answer(engine, warm, time.monotonic())
        print("engine: warmed up; sending the workload", flush=True)
        driven = await drive(
            workload, partial(_answer, engine), partial(print, ANSWERED, flush=True)
        )
    finally:
        await engine.abort_all()
        engine.shutdown()
    return WayResult(WAY, driven.samples, driven.wall_s, cores=driven.cores)


def main(argv: list[str] | None = None) -> int:
    """The child process: read the workload, serve it, write the result."""
    parser = argparse.ArgumentParser(description="the engine way of `llmq bench`")
    parser.add_argument("workload", type=Path, help="JSON list of BenchRequest")
    parser.add_argument("result", type=Path, help="where the WayResult JSON goes")
    parser.add_argument("cache_dir", type=Path, help="llmq's cache (prepared models)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    workload = [BenchRequest(**r) for r in json.loads(args.workload.read_text(encoding="utf-8"))]
    set_engine_env()
    result = asyncio.run(_serve(workload, args.cache_dir))
    args.result.write_text(json.dumps(asdict(result)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
