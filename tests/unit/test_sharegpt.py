"""ShareGPT sampling, from a small first-turns cache written into a temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from schemas.request import CHARS_PER_TOKEN
from tools import sharegpt
from tools.sharegpt import Prompt, first_turns, sample

CACHE_FILE = "sharegpt-first-turns.json"
MIN_CHARS = 4 * CHARS_PER_TOKEN  # 16

FITTING = [(f"A prompt that fits, number {i:02d}.", 10 + i) for i in range(20)]
UNFIT = [
    ("x" * (MIN_CHARS - 1), 50),  # too short
    ("y" * 4001, 50),  # too long for the default max_prompt_chars
    ("A perfectly good prompt, short answer.", 3),  # answer too short
]
EDGES = [("z" * MIN_CHARS, 4), ("w" * 4000, 4)]  # exactly at the bounds: kept


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    pairs = [list(p) for p in FITTING + UNFIT + EDGES]
    (tmp_path / CACHE_FILE).write_text(json.dumps(pairs))
    return tmp_path


def test_first_turns_reads_the_cache(cache_dir: Path) -> None:
    turns = first_turns(cache_dir)
    assert len(turns) == len(FITTING) + len(UNFIT) + len(EDGES)
    assert turns[0] == Prompt(FITTING[0][0], FITTING[0][1])


def test_sample_drops_prompts_too_short_too_long_or_with_short_answers(cache_dir: Path) -> None:
    pool = len(FITTING) + len(EDGES)
    picked = sample(pool, cache_dir, max_tokens=1_000)
    texts = {p.text for p in picked}
    assert texts == {t for t, _ in FITTING + EDGES}
    with pytest.raises(ValueError, match=f"asked for {pool + 1} prompts; ShareGPT has {pool}"):
        sample(pool + 1, cache_dir)


def test_max_prompt_chars_bounds_the_prompts(cache_dir: Path) -> None:
    picked = sample(len(FITTING) + 1, cache_dir, max_prompt_chars=100, max_tokens=1_000)
    assert all(len(p.text) <= 100 for p in picked)
    assert "w" * 4000 not in {p.text for p in picked}


def test_sample_caps_the_reply_tokens(cache_dir: Path) -> None:
    picked = sample(len(FITTING), cache_dir, seed=1, max_tokens=15)
    by_text = dict(FITTING + EDGES)
    for prompt in picked:
        assert prompt.reply_tokens == min(by_text[prompt.text], 15)
    assert max(p.reply_tokens for p in picked) == 15


def test_sample_is_deterministic_for_a_seed(cache_dir: Path) -> None:
    first = sample(10, cache_dir, seed=42)
    assert sample(10, cache_dir, seed=42) == first
    assert len({p.text for p in first}) == 10
    others = [sample(10, cache_dir, seed=s) for s in (1, 2, 3)]
    assert any(o != first for o in others)


def test_first_turns_builds_the_cache_from_a_truncated_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [
        {
            "id": "a",
            "conversations": [{"from": "human", "value": "Q1"}, {"from": "gpt", "value": "x" * 40}],
        },
        {"id": "b", "conversations": [{"from": "gpt", "value": "starts with the model"}]},
        {"id": "c", "conversations": [{"from": "human", "value": "alone"}]},
        {
            "id": "d",
            "conversations": [{"from": "human", "value": "Q2"}, {"from": "gpt", "value": "ok"}],
        },
        {"id": "e", "no_conversations": []},
    ]
    truncated_tail = '{"id": "f", "conversations": [{"fr'
    text = "[\n" + ",\n".join([*(json.dumps(r) for r in records), truncated_tail])
    data = tmp_path / "sharegpt.json"
    data.write_text(text, encoding="utf-8")
    monkeypatch.setattr(sharegpt, "dataset_file", lambda: data)
    cache = tmp_path / "cache"
    turns = first_turns(cache)
    assert turns == [Prompt("Q1", 10), Prompt("Q2", 1)]
    assert json.loads((cache / CACHE_FILE).read_text()) == [["Q1", 10], ["Q2", 1]]
    data.unlink()  # the second call reads the cache only
    assert first_turns(cache) == turns
