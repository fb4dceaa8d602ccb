"""The labelled question pairs for tuning and measuring the semantic cache: shape and balance."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

PAIRS = Path(__file__).resolve().parents[1] / "data" / "semantic_pairs.jsonl"

KEYS = {"a", "b", "same", "kind", "domain", "length", "split"}
NEAR_MISS_KINDS = {"negation", "units", "roles", "numbers", "dates", "entities", "other-question"}
KINDS = {"paraphrase"} | NEAR_MISS_KINDS
DOMAINS = {
    "general",
    "coding",
    "science",
    "health",
    "finance",
    "travel",
    "cooking",
    "history",
    "support",
    "math",
}
LENGTHS = {"short", "long"}
SPLITS = {"tune", "measure"}

MIN_PARAPHRASES_PER_SPLIT = 100
MIN_NEAR_MISSES_PER_KIND_AND_SPLIT = 15


def _load() -> list[dict[str, Any]]:
    """The rows of the set, in file order."""
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line]


ROWS = _load()


def _text(question: str) -> str:
    """A question as compared across splits: case and surrounding space do not count."""
    return question.strip().casefold()


def _bad_values(row: dict[str, Any]) -> list[str]:
    """What is wrong with one row's keys and values; empty when nothing is."""
    if set(row) != KEYS:
        return [f"keys {sorted(row)}"]
    wrong = [key for key in ("a", "b") if not isinstance(row[key], str) or not row[key].strip()]
    if not isinstance(row["same"], bool):
        wrong.append("same")
    allowed = {"kind": KINDS, "domain": DOMAINS, "length": LENGTHS, "split": SPLITS}
    wrong += [key for key, values in allowed.items() if row[key] not in values]
    return wrong


def test_rows_have_the_keys_and_allowed_values() -> None:
    """Every row has exactly the documented keys, each with an allowed value."""
    assert ROWS
    assert [(row, bad) for row in ROWS if (bad := _bad_values(row))] == []


def test_same_means_paraphrase_and_questions_differ() -> None:
    """A pair is the same question iff it is a paraphrase, and its two texts differ."""
    assert [r for r in ROWS if r["same"] is not (r["kind"] == "paraphrase")] == []
    assert [r for r in ROWS if _text(r["a"]) == _text(r["b"])] == []


def test_no_duplicate_pairs() -> None:
    """No pair appears twice, in either order."""
    pairs = Counter(frozenset((_text(r["a"]), _text(r["b"]))) for r in ROWS)
    assert [sorted(p) for p, n in pairs.items() if n > 1] == []


def test_each_split_has_enough_of_every_kind() -> None:
    """Both splits hold enough paraphrases and enough near misses of every kind."""
    counts = Counter((r["split"], r["kind"]) for r in ROWS)
    for split in SPLITS:
        assert counts[split, "paraphrase"] >= MIN_PARAPHRASES_PER_SPLIT, split
        for kind in NEAR_MISS_KINDS:
            assert counts[split, kind] >= MIN_NEAR_MISSES_PER_KIND_AND_SPLIT, (split, kind)


def test_every_domain_is_in_both_splits() -> None:
    """Each domain appears in the tune split and in the measure split."""
    seen = {(r["split"], r["domain"]) for r in ROWS}
    assert {(s, d) for s in SPLITS for d in DOMAINS} <= seen


def test_splits_alternate_within_each_kind_and_domain() -> None:
    """The split rule: within a (kind, domain) group, tune and measure alternate in file order."""
    position: Counter[tuple[str, str]] = Counter()
    for row in ROWS:
        group = (row["kind"], row["domain"])
        expected = "tune" if position[group] % 2 == 0 else "measure"
        assert row["split"] == expected, row["a"]
        position[group] += 1


def test_no_question_is_in_both_splits() -> None:
    """A question text used for tuning never appears in the measured split."""
    texts: dict[str, set[str]] = {split: set() for split in SPLITS}
    for row in ROWS:
        texts[row["split"]] |= {_text(row["a"]), _text(row["b"])}
    assert texts["tune"] & texts["measure"] == set()


def test_at_least_a_quarter_are_long() -> None:
    """Long questions (context, pasted code, a preamble) make up at least a quarter of the set."""
    long_rows = sum(r["length"] == "long" for r in ROWS)
    assert long_rows * 4 >= len(ROWS)


HOLDOUT = PAIRS.with_name("semantic_pairs_holdout.jsonl")
HOLDOUT_KINDS = KINDS | {"additions"}
HOLDOUT_ROWS = [json.loads(line) for line in HOLDOUT.read_text(encoding="utf-8").splitlines()]


def test_the_holdout_set_is_balanced_and_new() -> None:
    """The held-out set: its keys and values, at least 12 near misses of each kind (additions
    too), 100 paraphrases, and no pair of the tuned set (30 rows share one common question
    text with it, as semantic_pairs_holdout.md says)."""
    keys = KEYS - {"split"}
    assert [r for r in HOLDOUT_ROWS if set(r) != keys] == []
    assert [r for r in HOLDOUT_ROWS if r["kind"] not in HOLDOUT_KINDS] == []
    assert [r for r in HOLDOUT_ROWS if r["same"] is not (r["kind"] == "paraphrase")] == []
    assert {r["domain"] for r in HOLDOUT_ROWS} == DOMAINS
    counts = Counter(r["kind"] for r in HOLDOUT_ROWS)
    assert counts["paraphrase"] >= MIN_PARAPHRASES_PER_SPLIT
    assert min(counts[kind] for kind in HOLDOUT_KINDS) >= 12
    tuned = {frozenset((_text(r["a"]), _text(r["b"]))) for r in ROWS}
    assert [r for r in HOLDOUT_ROWS if frozenset((_text(r["a"]), _text(r["b"]))) in tuned] == []
