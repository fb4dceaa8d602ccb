"""`llmq bench` without engines: its command line, the record in BENCHMARKS.md, the pacing
of requests, and what the llmq and engine ways make of their answers."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from llmq.cli import parser
from schemas.errors import ErrorCode
from schemas.request import ChatMessage
from schemas.result import (
    CacheStatus,
    ChatCompletion,
    Choice,
    ErrorInfo,
    InferenceResult,
    Timings,
    Usage,
)
from tools.bench import command, runner
from tools.bench.command import bench_command
from tools.bench.cpu import BENCH, OTHER, PARTS
from tools.bench.runner import BEGIN, END, TITLE, machine, replace_section
from tools.bench.samples import BenchRequest, Sample, WayResult
from tools.bench.ways import WAYS, Reply, drive
from tools.bench.ways.engine import load_result
from tools.bench.ways.queue import reply


def test_bench_defaults_and_the_command_that_repeats_them() -> None:
    args = parser().parse_args(["bench"])
    assert (args.requests, args.max_tokens, args.rate, args.seed) == (64, 64, None, 0)
    assert args.ways == list(WAYS)
    assert args.duplicates and args.out == Path("bench-results")
    assert args.cache_hits == 1000
    assert bench_command(args) == (
        "llmq bench --requests 64 --max-tokens 64 --seed 0 "
        "--ways engine,vllm-serve,llmq,gateway,lanes "
        "--exact-share 0.25 --paraphrase-share 0.25 --duplicate-rate 4 --cache-hits 1000"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--requests", "8", "--max-tokens", "16", "--rate", "2.5", "--ways", "llmq,engine"],
        ["--seed", "3", "--no-duplicates", "--ways", "vllm-serve", "--cache-hits", "0"],
        ["--exact-share", "0.5", "--paraphrase-share", "0", "--duplicate-rate", "0.5"],
        ["--ways", "lanes", "--cache-hits", "20"],
        ["--ways", "engine,llmq", "--repeat", "3"],
    ],
)
def test_the_recorded_command_parses_back_to_the_same_run(argv: list[str]) -> None:
    args = parser().parse_args(["bench", *argv])
    words = bench_command(args).split()
    assert words[:2] == ["llmq", "bench"]
    again = parser().parse_args(words[1:])
    names = ("requests", "max_tokens", "rate", "seed", "ways", "duplicates", "cache_hits")
    for name in (*names, "repeat"):
        assert getattr(again, name) == getattr(args, name)
    if args.duplicates:
        for name in ("exact_share", "paraphrase_share", "duplicate_rate"):
            assert getattr(again, name) == getattr(args, name)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ways", "engine,nope"], "want distinct ways out of engine,vllm-serve,llmq"),
        (["--ways", "llmq,llmq"], "want distinct ways"),
        (["--ways", ","], "want distinct ways"),
        (["--requests", "0"], "must be at least 1"),
        (["--rate", "0"], "must be above 0"),
        (["--exact-share", "1.5"], "must be between 0 and 1"),
        (["--cache-hits", "-1"], "must be 0 or more"),
        (["--repeat", "0"], "must be at least 1"),
    ],
)
def test_bad_flags_are_refused_with_a_reason(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["bench", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("ways", ["llmq", "engine,vllm-serve", "lanes,gateway"])
def test_repeat_without_a_ratio_to_repeat_is_refused(
    ways: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = parser().parse_args(["bench", "--ways", ways, "--repeat", "2"])
    assert command.run(args) == 2
    assert "--repeat repeats ratios" in capsys.readouterr().err


def test_a_new_record_gets_the_title_and_the_section() -> None:
    text = replace_section(TITLE, "## Run 1\n\nfigures\n")
    assert text.startswith(TITLE)
    assert text.endswith(f"{BEGIN}\n## Run 1\n\nfigures\n{END}\n")


def test_the_section_is_replaced_and_the_rest_kept() -> None:
    before = f"# Benchmarks\n\nintro\n\n{BEGIN}\nold figures\n{END}\n\n## Notes by hand\n"
    after = replace_section(before, "new figures")
    assert after == f"# Benchmarks\n\nintro\n\n{BEGIN}\nnew figures\n{END}\n## Notes by hand\n"
    assert replace_section(after, "new figures") == after
    assert "old figures" not in after


def test_unpaired_markers_are_not_guessed_at() -> None:
    with pytest.raises(ValueError, match="not a pair"):
        replace_section(f"{END}\n{BEGIN}\n", "figures")
    with pytest.raises(ValueError, match="not a pair"):
        replace_section(f"{BEGIN}\nno end\n", "figures")


def test_machine_names_cores_memory_and_cpu(tmp_path: Path) -> None:
    cpuinfo, meminfo = tmp_path / "cpuinfo", tmp_path / "meminfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU @ 2.0GHz\nflags\t\t: avx\n")
    meminfo.write_text("MemTotal:       24684096 kB\nMemFree:        1 kB\n")
    described = machine(cpuinfo, meminfo)
    assert "cores, 23.5 GiB RAM, Test CPU @ 2.0GHz (" in described
    assert "RAM unknown" in machine(cpuinfo, tmp_path / "missing")


def test_drive_sends_at_arrival_times_and_keeps_failures() -> None:
    workload = [
        BenchRequest(0, "a", 4, 0.0),
        BenchRequest(1, "b", 4, 0.15, "exact_repeat"),
        BenchRequest(2, "fail", 4, 0.0),
    ]
    answered: list[int] = []

    async def answer(request: BenchRequest, sent: float) -> Reply:
        if request.prompt == "fail":
            raise RuntimeError("engine down")
        await asyncio.sleep(0.05)
        return Reply(3, 4, time.monotonic() - sent, cache="exact")

    samples, wall_s, cores = asyncio.run(drive(workload, answer, lambda: answered.append(1)))
    assert cores and set(cores) <= {*PARTS, BENCH, OTHER}  # metered (test_bench_cpu.py)
    assert asyncio.run(drive(workload[:1], answer, lambda: None, meter=False)).cores == {}
    assert [s.index for s in samples] == [0, 1, 2]
    assert len(answered) == 3
    first, late, failed = samples
    assert first.ok and first.sent_s < late.sent_s and first.latency_s >= 0.05
    assert late.sent_s >= 0.15 and late.kind == "exact_repeat" and late.cache == "exact"
    assert wall_s >= late.sent_s + late.latency_s
    assert not failed.ok and failed.error == "RuntimeError: engine down"
    assert failed.output_tokens == 0


def _result(cache: CacheStatus, timings: Timings) -> InferenceResult:
    return InferenceResult(
        correlation_id="c1",
        status="ok",
        cache=cache,
        response=ChatCompletion(
            id="c1",
            created=0,
            model="smollm2-135m",
            choices=[
                Choice(message=ChatMessage(role="assistant", content="hi"), finish_reason="stop")
            ],
            usage=Usage(prompt_tokens=30, completion_tokens=12, total_tokens=42),
        ),
        timings=timings,
    )


def test_a_generated_answer_keeps_its_ttft_its_end_and_the_engines_time() -> None:
    timings = Timings(queue_ms=100, ttft_ms=300, engine_ms=1300, total_ms=1500)
    got = reply(_result(CacheStatus.NONE, timings), ttft_s=0.6, done_at=12.5)
    assert (got.prompt_tokens, got.output_tokens, got.cache, got.error) == (30, 12, "none", None)
    assert (got.ttft_s, got.done_at) == (0.6, 12.5)
    assert got.engine_s == pytest.approx(1.3)


def test_a_cached_answer_has_no_engine_time() -> None:
    got = reply(_result(CacheStatus.EXACT, Timings(total_ms=20)), ttft_s=0.025, done_at=1.0)
    assert got.ttft_s == 0.025 and got.engine_s is None and got.cache == "exact"


def test_an_error_result_is_a_failed_reply() -> None:
    error = ErrorInfo(code=ErrorCode.ENGINE_TIMEOUT, message="too slow", retriable=True)
    got = reply(InferenceResult(correlation_id="c1", status="error", error=error), None, 1.0)
    assert got.error == "engine_timeout: too slow"
    assert got.output_tokens == 0


def test_the_engine_child_result_reads_back(tmp_path: Path) -> None:
    sample = Sample(0, "fresh", True, 0.0, 1.5, 0.2, None, 30, 12)
    result = WayResult("engine", [sample], wall_s=1.6)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(asdict(result)))
    assert load_result(path) == result


def test_the_wall_ends_at_the_last_answer_not_at_the_last_calls_return() -> None:
    """llmq's way reads the final result after the stream's last piece: that read is no
    part of serving the answer (the engine's way has none)."""

    async def answer(request: BenchRequest, sent: float) -> Reply:
        await asyncio.sleep(0.3)  # reading the result after the answer was all there
        return Reply(3, 4, 0.001, done_at=sent + 0.002)

    driven = asyncio.run(drive([BenchRequest(0, "a", 4, 0.0)], answer, lambda: None, meter=False))
    [sample] = driven.samples
    assert sample.latency_s == pytest.approx(0.002)
    assert driven.wall_s == pytest.approx(sample.sent_s + 0.002)


def test_repeated_ways_alternate_their_order_and_report_each_ratio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--repeat runs the compared ways again, reversed every other time, and reports each
    ratio over the runs (the ways replaced by results made here: no engine)."""
    ran: list[str] = []
    walls = iter([2.0, 1.0, 4.0])  # llmq's, one a run: 1, 2 and 0.5 requests/s

    def result(name: str) -> WayResult:
        ran.append(name)
        answered = [
            Sample(i, "fresh", True, 0.0, 0.5, 0.1, 0.4, 5, 10, "none", None) for i in range(2)
        ]
        return WayResult(name, answered, wall_s=next(walls) if name == "llmq" else 1.0)

    monkeypatch.setattr(runner, "_throughput", lambda name, *_: result(name))
    monkeypatch.setattr(runner, "_llmq", lambda *_: [result("llmq")])
    written = runner.run_bench(
        ["engine", "llmq"],
        [],
        tmp_path / "out",
        cache_dir=tmp_path,
        record=tmp_path / "BENCHMARKS.md",
        command="llmq bench --ways engine,llmq --repeat 3",
        settings={},
        repeat=3,
    )
    assert ran == ["engine", "llmq", "llmq", "engine", "engine", "llmq"]
    spread = json.loads(written.results.read_text())["repeats"]["ratios"]["llmq/engine req_per_s"]
    assert spread["values"] == pytest.approx([0.5, 1.0, 0.25])
    assert spread["mean"] == pytest.approx(1.75 / 3)
    assert spread["low"] < spread["mean"] < spread["high"]
    [drawn] = [p for p in written.plots if p.name == "repeats.png"]
    assert drawn.read_bytes().startswith(b"\x89PNG")
    text = written.markdown.read_text()
    assert "The compared ways ran 3 times in all" in text
    assert f"| requests/s | {spread['mean']:.2f} [" in text
    assert "]: 0.50, 1.00, 0.25 |" in text
