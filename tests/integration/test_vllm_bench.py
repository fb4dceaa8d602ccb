"""vLLM's own serving benchmark against vLLM's server and llmq's front door, for real and
small: every request of both answers in full, and the comparison is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import REPO
from tools.bench.vllm_bench import FIGURES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(660)]

PROMPTS = 4
OUTPUT_LEN = 6


def test_vllms_benchmark_runs_against_both_and_compares_them(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        *(sys.executable, "-m", "tools.bench.vllm_bench", "--prompts", str(PROMPTS)),
        *("--input-len", "16", "--output-len", str(OUTPUT_LEN), "--out", str(out)),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"vllm-serve", "llmq"}
    for way, result in results.items():
        assert (result["completed"], result["failed"]) == (PROMPTS, 0), way
        assert result["total_output_tokens"] == PROMPTS * OUTPUT_LEN, way  # ignore_eos
    assert results["llmq"]["total_input_tokens"] == results["vllm-serve"]["total_input_tokens"]
    table = done.stdout.splitlines()[-len(FIGURES) - 1 :]  # vLLM's own report before it
    assert table[0].split() == ["vllm-serve", "llmq", "llmq", "÷", "serve"]
    assert [line[:34].strip() for line in table[1:]] == list(FIGURES.values())
