"""vLLM's own serving benchmark against vLLM's server and llmq's front door, for real and
small: every request of both answers in full, and the comparison is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.helpers import REPO
from tools.bench.vllm_bench import APIS, FIGURES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(660)]

PROMPTS = 4
OUTPUT_LEN = 6


def test_vllms_benchmark_runs_against_both_and_compares_them(tmp_path: Path) -> None:
    """Over both APIs: their streams are read as vLLM's server sends them (one `data:` line
    an event)."""
    out = tmp_path / "results.json"
    command = [
        *(sys.executable, "-m", "tools.bench.vllm_bench", "--prompts", str(PROMPTS)),
        *("--input-len", "16", "--output-len", str(OUTPUT_LEN), "--out", str(out)),
        *("--api", *APIS),
    ]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == set(APIS)
    for api, ways in results.items():
        assert set(ways) == {"vllm-serve", "llmq"}
        for way, result in ways.items():
            assert (result["completed"], result["failed"]) == (PROMPTS, 0), (api, way)
            assert result["total_output_tokens"] == PROMPTS * OUTPUT_LEN, (api, way)  # ignore_eos
        assert ways["llmq"]["total_input_tokens"] == ways["vllm-serve"]["total_input_tokens"]
    lines = done.stdout.splitlines()
    for api, (*_, endpoint) in APIS.items():
        at = lines.index(f"over {endpoint}")  # vLLM's own reports come before the tables
        table = lines[at + 1 : at + 2 + len(FIGURES)]
        assert table[0].split() == ["vllm-serve", "llmq", "llmq", "÷", "serve"], api
        assert [line[:34].strip() for line in table[1:]] == list(FIGURES.values()), api
