"""The prefix-affinity benchmark's workload, figures and report, without a stack."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest

from tools.bench.prefix_affinity import Run, Worker, section, workload

DOC_CHARS = 1_000


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """30 long first turns, each starting differently, and 10 too short to be documents."""
    long = [[f"Document {i}: " + "lorem ipsum " * 120, 50] for i in range(30)]
    short = [[f"Short {i}.", 5] for i in range(10)]
    (tmp_path / "sharegpt-first-turns.json").write_text(json.dumps(long + short))
    return tmp_path


def test_each_document_is_asked_as_often_and_the_order_mixes_them(cache_dir: Path) -> None:
    requests = workload(6, 48, DOC_CHARS, cache_dir)
    docs = Counter(r.prompt[:DOC_CHARS] for r in requests)
    assert len(docs) == 6 and set(docs.values()) == {8}
    assert all(len(doc) == DOC_CHARS and doc.startswith("Document") for doc in docs)
    assert len({r.prompt for r in requests}) == 48  # each with a question of its own
    first = [r.prompt[:DOC_CHARS] for r in requests[:12]]
    assert len(set(first)) > 2  # not one document after another
    assert workload(6, 48, DOC_CHARS, cache_dir) == requests


def test_documents_that_start_alike_are_refused(tmp_path: Path) -> None:
    same = [["The same start. " * 80 + str(i), 50] for i in range(4)]
    (tmp_path / "sharegpt-first-turns.json").write_text(json.dumps(same))
    with pytest.raises(ValueError, match="start alike"):
        workload(2, 4, DOC_CHARS, tmp_path)


def test_more_documents_than_sharegpt_has_are_refused(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="30 first turns"):
        workload(31, 62, DOC_CHARS, cache_dir)


def _run(
    placement: str,
    wall_s: float,
    loads: list[tuple[float, float, float]],
    errors: dict[str, int] | None = None,
) -> Run:
    workers = [Worker(queried=q, hit=h, prompt=p, generated=10) for q, h, p in loads]
    failed = sum((errors or {}).values())
    return Run(placement, 0, 100, 100 - failed, wall_s, workers, errors or {})


def test_hit_rate_throughput_and_spread_are_over_the_pool() -> None:
    run = _run("prefix", 50, [(1_000, 900, 1_000), (3_000, 1_500, 3_000)])
    assert run.hit_rate == pytest.approx(2_400 / 4_000)
    assert run.requests_per_s == pytest.approx(2.0)
    assert run.spread == pytest.approx(3_000 / 2_000)
    assert _run("idle", 1, [(0, 0, 0), (0, 0, 0)]).hit_rate == 0.0


def test_the_report_gives_the_command_both_rows_and_the_ratio() -> None:
    args = argparse.Namespace(
        documents=24, requests=192, doc_chars=4_000, replicas=2, kv_cache_gib=1
    )
    loads: list[tuple[float, float, float]] = [(1_000, 500, 1_000), (1_000, 500, 1_000)]
    fingerprint = _run("fingerprint", 190, loads, {"engine_timeout: too slow": 5})
    prefix = _run("prefix", 100, [(1_000, 900, 1_200), (1_000, 900, 800)])
    text = section([fingerprint, prefix], args)
    assert "python -m tools.bench.prefix_affinity --documents 24 --requests 192" in text
    assert "| fingerprint | 95/100 | engine_timeout: too slow: 5 | 190 | 0.50 | 50.0% |" in text
    assert "| prefix | 100/100 | none | 100 | 1.00 | 90.0% |" in text
    assert "**2.00x**" in text
