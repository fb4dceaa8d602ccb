"""`llmq bench` for real, small: every way and scenario answers every request, and the
results are written.

It starts its own engines (in-process AsyncLLM, vLLM's OpenAI server, local stacks on free
ports with their front door), one after another, so it needs none of the session's fixtures
but the console script. Arrivals are Poisson (all at once is the same path with every
arrival at 0).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tools.bench.runner import BEGIN, END

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1260)]

REQUESTS = 8
HITS = 40


def test_a_small_bench_runs_every_way_and_writes_its_results(
    llmq_bin: Path, tmp_path: Path
) -> None:
    out, record = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    command = [
        *(str(llmq_bin), "bench", "--requests", str(REQUESTS), "--max-tokens", "16"),
        *("--rate", "8", "--exact-share", "0.25", "--paraphrase-share", "0.25"),
        *("--cache-hits", str(HITS), "--out", str(out), "--record", str(record)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    results = {r["way"]: r for r in doc["results"]}
    # In the order they ran: the duplicate-heavy and cache-hit runs share the llmq way's stack.
    assert list(results) == [
        *("engine", "vllm-serve", "llmq", "llmq-duplicates", "llmq-cache-hits", "gateway"),
        *("interactive-idle", "batch-lane", "interactive-busy"),
    ]
    for way, result in results.items():
        samples = result["samples"]
        assert all(s["ok"] for s in samples), (way, [s["error"] for s in samples])
        assert all(s["output_tokens"] > 0 for s in samples), way
    for way in ("engine", "vllm-serve", "llmq", "llmq-duplicates", "gateway", "batch-lane"):
        samples = results[way]["samples"]
        assert [s["index"] for s in samples] == list(range(REQUESTS)), way
        assert all(s["ttft_s"] is not None for s in samples), way
    # Poisson arrivals: the requests were not all sent at once.
    assert max(s["sent_s"] for s in results["llmq"]["samples"]) > 0.1
    # Every repeat of the cache-hit run is an exact-cache answer, not a generation.
    hits = results["llmq-cache-hits"]
    assert len(hits["samples"]) == HITS
    assert {s["cache"] for s in hits["samples"]} == {"exact"}
    # Interactive requests were timed idle and behind the batch lane: their figures exist.
    assert len(results["interactive-idle"]["samples"]) == 10
    assert results["interactive-busy"]["samples"]
    assert set(doc["lanes"]) == {
        "interactive_p50_ratio",
        "interactive_p99_ratio",
        "batch_over_llmq_output_tok_per_s",
    }
    # Every exact repeat is coalesced with its original or answered from the cache.
    duplicates = results["llmq-duplicates"]
    exact = sum(s["kind"] == "exact_repeat" for s in duplicates["samples"])
    assert exact == REQUESTS // 4
    assert duplicates["generations"] <= REQUESTS - exact
    assert doc["summaries"]["llmq"]["overhead_p50_s"] is not None
    assert "llmq/engine req_per_s" in doc["ratios"]
    assert "llmq/vllm-serve output_tok_per_s" in doc["ratios"]
    assert "gateway/vllm-serve latency_p50_s" in doc["ratios"]
    assert set(doc["added_by_the_door_s"]) >= {"ttft_p50_s", "latency_p50_s"}

    plots = sorted(out.glob("*.png"))
    assert plots and all(p.stat().st_size > 0 for p in plots)
    section = (out / "results.md").read_text().strip()
    text = record.read_text()
    assert f"{BEGIN}\n{section}\n{END}\n" in text
    assert f"llmq bench --requests {REQUESTS} --max-tokens 16 --rate 8" in section
    assert "Lanes: behind the batch lane's backlog an interactive request took" in section
    assert (out / "lanes.png").stat().st_size > 0
