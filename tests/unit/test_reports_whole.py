"""The reports `llmq bench` and `llmq faults` rewrite (BENCHMARKS.md, results.md,
RELIABILITY.md, README.md's section) are written whole, through a file renamed over the old
one: a crash or a full disk mid-write leaves the old file or the new, never one cut short.
A second name (a hard link) of the old file shows it: one rewritten in place changes under
it too."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.bench import runner
from tools.bench.runner import BEGIN, END, record_section
from tools.bench.samples import Sample, WayResult
from tools.faults import report
from tools.faults.runner import run_faults

pytestmark = pytest.mark.timeout(60)
OLD = "# old\n"


def old_name(path: Path) -> Path:
    """A second name of `path`, made to hold OLD."""
    path.write_text(OLD)
    link = path.with_name(f"{path.name}.old")
    os.link(path, link)
    return link


def test_a_benchmarks_section_is_written_whole(tmp_path: Path) -> None:
    record = tmp_path / "BENCHMARKS.md"
    old = old_name(record)
    record_section(record, "new table\n", BEGIN, END)
    assert old.read_text() == OLD and "new table" in record.read_text()


def test_a_bench_runs_record_and_markdown_are_written_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = [Sample(0, "fresh", True, 0.0, 0.5, 0.1, 0.4, 5, 10, "none", None)]
    monkeypatch.setattr(runner, "_throughput", lambda name, *_: WayResult(name, answered, 1.0))
    record, markdown = tmp_path / "BENCHMARKS.md", tmp_path / "out" / "results.md"
    markdown.parent.mkdir()
    olds = [old_name(record), old_name(markdown)]
    runner.run_bench(
        ["engine"],
        [],
        tmp_path / "out",
        cache_dir=tmp_path,
        record=record,
        command="llmq bench --ways engine",
        settings={},
    )
    assert [old.read_text() for old in olds] == [OLD, OLD]
    assert BEGIN in record.read_text() and markdown.read_text() != OLD


def test_the_reliability_report_and_readme_section_are_written_whole(tmp_path: Path) -> None:
    reliability, readme = tmp_path / "RELIABILITY.md", tmp_path / "README.md"
    olds = [old_name(reliability), old_name(readme)]
    run_faults(  # no scenario: no stack, only the report and the README's section
        [],
        scale=1.0,
        cache_dir=tmp_path,
        report_path=reliability,
        out_dir=tmp_path / "out",
        readme=readme,
        command="llmq faults",
    )
    assert [old.read_text() for old in olds] == [OLD, OLD]
    assert (
        reliability.read_text().startswith("# Reliability") and report.BEGIN in readme.read_text()
    )
