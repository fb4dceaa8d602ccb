"""`llmq bench` for real, small: every way answers every request, and the results are written.

It starts its own engines (in-process AsyncLLM, vLLM's OpenAI server, a local stack on free
ports with its front door), one after another, so it needs none of the session's fixtures
but the console script.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tools.bench.runner import BEGIN, END

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REQUESTS = 8


def test_a_small_bench_runs_every_way_and_writes_its_results(
    llmq_bin: Path, tmp_path: Path
) -> None:
    out, record = tmp_path / "out", tmp_path / "BENCHMARKS.md"
    command = [
        *(str(llmq_bin), "bench", "--requests", str(REQUESTS), "--max-tokens", "16"),
        *("--exact-share", "0.25", "--paraphrase-share", "0.25"),
        *("--out", str(out), "--record", str(record)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=840, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    doc = json.loads((out / "results.json").read_text())
    results = {r["way"]: r for r in doc["results"]}
    # In the order they ran: the duplicate-heavy run shares the llmq way's stack.
    assert list(results) == ["engine", "vllm-serve", "llmq", "llmq-duplicates", "gateway"]
    for way, result in results.items():
        samples = result["samples"]
        assert [s["index"] for s in samples] == list(range(REQUESTS)), way
        assert all(s["ok"] for s in samples), (way, [s["error"] for s in samples])
        assert all(s["output_tokens"] > 0 and s["ttft_s"] is not None for s in samples), way
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
    assert f"llmq bench --requests {REQUESTS} --max-tokens 16" in section
