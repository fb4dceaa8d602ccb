"""The fault run's table, report, JSON and README section, from hand-made outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.faults.outcome import Finding, Kind, Outcome
from tools.faults.report import (
    BEGIN,
    END,
    README_HEADING,
    report,
    section,
    table,
    update_readme,
    write_json,
)
from tools.faults.tally import Tally

META: dict[str, object] = {
    "command": "llmq faults --scale 1",
    "machine": "2 cores, 23.5 GiB RAM, Test CPU (Linux x86_64)",
    "date": "2026-11-21 12:00 UTC",
}
CLEAN = Outcome(
    "worker-kill",
    "kill -9 of the worker mid-batch, restarted",
    Tally(
        sent=40,
        accepted=40,
        replies=40,
        lost=0,
        duplicates=2,
        conflicting=0,
        recovery_s=31.24,
        generations=42,
        regenerated=2,
    ),
    notes=["9 in flight at the kill"],
)
LOSSY = Outcome(
    "kafka-stop",
    "Kafka broker stopped for 12 s under load",
    Tally(
        sent=30,
        accepted=28,
        replies=27,
        lost=1,
        duplicates=0,
        conflicting=1,
        errors={"internal_error": 2},
        lost_ids=("kafka-1",),
    ),
    notes=["a | b"],
    findings=[
        Finding(Kind.BROKEN, "streams died; its log ends: x"),
        Finding(Kind.TIMING, "nothing in flight at the kill"),
    ],
)
BROKEN = Outcome("poison", "poison records", findings=[Finding(Kind.BROKEN, "boom")])
SLOW = Outcome(
    "worker-kill",
    "kill -9 of the worker mid-batch, restarted",
    CLEAN.tally,
    findings=[Finding(Kind.TIMING, "nothing in flight at the kill")],
)


def test_failed_means_lost_conflicting_no_tally_or_a_broken_guarantee() -> None:
    assert [o.failed for o in (CLEAN, LOSSY, BROKEN, SLOW)] == [False, True, True, False]


def test_the_table_has_a_row_per_scenario_with_its_counts() -> None:
    rows = table([CLEAN, LOSSY, BROKEN]).splitlines()
    assert len(rows) == 5
    assert rows[2].startswith(
        "| kill -9 of the worker mid-batch, restarted | 40 | 40 | 40 | 0 | 2 "
    )
    assert "| 0 | 42 | 0 | 31.2 | 9 in flight at the kill; 2 generated twice |" in rows[2]
    assert "| internal_error 2 | - |" in rows[3]
    assert "a \\| b; **broken**: streams died" in rows[3]  # a pipe cannot break the table
    assert rows[3].endswith("; **timing**: nothing in flight at the kill |")
    assert rows[3].startswith("| **failed**: Kafka broker stopped for 12 s under load |")
    assert rows[4].startswith("| **failed**: poison records | - | - |")
    assert all(row.count(" | ") == rows[0].count(" | ") for row in rows[2:4])


def test_the_report_says_how_it_was_measured_and_defines_its_columns() -> None:
    text = report([CLEAN], META)
    assert "with `llmq faults --scale 1`" in text and "2026-11-21 12:00 UTC" in text
    assert table([CLEAN]) in text
    for word in ("accepted", "lost", "duplicates", "conflicting", "recovery s"):
        assert f"- **{word}**" in text


def test_the_readme_section_lists_findings_and_points_to_the_report() -> None:
    text = section([CLEAN, LOSSY], META, "RELIABILITY.md")
    assert "[RELIABILITY.md](RELIABILITY.md)" in text
    assert table([CLEAN, LOSSY], notes=False).strip() in text
    assert "- kafka-stop (broken): streams died; its log ends: x" in text
    assert "- kafka-stop (timing): nothing in flight at the kill" in text


def test_the_readme_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Reliability\n\n{BEGIN}\nold\n{END}\n\n## Next\n")
    update_readme(readme, "new table\n")
    assert readme.read_text() == f"# x\n\n## Reliability\n\n{BEGIN}\nnew table\n{END}\n## Next\n"


def test_a_readme_without_markers_gets_a_reliability_section_at_the_end(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\ntext\n")
    update_readme(readme, "table\n")
    assert readme.read_text() == f"# x\n\ntext\n\n{README_HEADING}\n\n{BEGIN}\ntable\n{END}\n"


def test_unpaired_markers_are_left_for_a_person(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"{END}\n{BEGIN}\n")
    with pytest.raises(ValueError, match="not a pair"):
        update_readme(readme, "table\n")


def test_the_json_holds_every_outcome(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.json"
    write_json([CLEAN, LOSSY, BROKEN], META, path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["meta"] == META
    assert [o["scenario"] for o in doc["outcomes"]] == ["worker-kill", "kafka-stop", "poison"]
    assert doc["outcomes"][1]["tally"]["lost_ids"] == ["kafka-1"]
    assert doc["outcomes"][2]["tally"] is None
    assert doc["outcomes"][2]["findings"] == [{"kind": "broken", "text": "boom"}]
