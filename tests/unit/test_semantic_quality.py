"""The semantic cache's quality figures: Wilson intervals and rates per split and kind."""

from __future__ import annotations

import pytest

from tools.bench.semantic_quality import rates, table
from tools.intervals import wilson


def test_wilson_matches_the_textbook_values() -> None:
    assert wilson(0, 20)[0] == 0.0
    assert wilson(0, 20)[1] == pytest.approx(0.1611, abs=1e-4)
    assert wilson(10, 20) == pytest.approx((0.2993, 0.7007), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_rates_count_paraphrases_near_misses_and_each_kind_per_split() -> None:
    pairs = [
        {"split": "tune", "kind": "paraphrase", "same": True},
        {"split": "tune", "kind": "paraphrase", "same": True},
        {"split": "tune", "kind": "numbers", "same": False},
        {"split": "measure", "kind": "paraphrase", "same": True},
        {"split": "measure", "kind": "negation", "same": False},
        {"split": "measure", "kind": "numbers", "same": False},
    ]
    found = rates(pairs, [True, False, False, True, True, False])
    got = [(r.split, r.kind, r.pairs, r.hits) for r in found]
    assert got == [
        ("measure", "paraphrase", 1, 1),
        ("measure", "near misses", 2, 1),
        ("measure", "negation", 1, 1),
        ("measure", "numbers", 1, 0),
        ("tune", "paraphrase", 2, 1),
        ("tune", "near misses", 1, 0),
        ("tune", "numbers", 1, 0),
    ]
    assert "| tune | paraphrase | 2 | 1 (50.0%) |" in table(found)
