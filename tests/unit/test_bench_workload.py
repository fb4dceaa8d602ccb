"""The benchmark workload, from a small first-turns cache written into a temporary directory."""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

from streams.semantic_guard import same_question
from tools.bench.workload import REWORDINGS, arrival_times, build_workload, cache_hit_workload

N_PROMPTS = 200
DUPLICATE = "Explain quantum computing in simple terms"
QUESTIONS = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "Click Me!",
    "SQL joins: inner vs outer, explain with examples.",
    "I have a 32-bit binary; how can I tell if it's big-endian?",
    "   leading spaces and no final mark",
    '"Quoted" prompt that starts with a sign',
]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """200 distinct prompts plus two real repeats of one of them (recorded replies of 10,
    90 and 30 tokens)."""
    pairs: list[list[object]] = [
        [f"Prompt number {i:03d}: tell me about topic {i}.", 5 + i] for i in range(N_PROMPTS)
    ]
    pairs += [[DUPLICATE, 10], [DUPLICATE, 90], [DUPLICATE.lower() + "  ", 30]]
    (tmp_path / "sharegpt-first-turns.json").write_text(json.dumps(pairs))
    return tmp_path


def test_the_same_seed_gives_the_same_workload(cache_dir: Path) -> None:
    def build(seed: int) -> object:
        return build_workload(
            60, cache_dir, seed=seed, rate=5.0, exact_share=0.2, paraphrase_share=0.2
        )

    assert build(3) == build(3)
    assert build(3) != build(4)


def test_all_at_once_sends_everything_at_zero(cache_dir: Path) -> None:
    workload = build_workload(20, cache_dir)
    assert [r.arrival_s for r in workload] == [0.0] * 20
    assert [r.index for r in workload] == list(range(20))


def test_poisson_arrivals_have_a_mean_gap_of_one_over_the_rate() -> None:
    times = arrival_times(20_000, rate=4.0, seed=7)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert times[0] == 0.0
    assert all(g >= 0 for g in gaps)
    assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.03)
    # Exponential gaps: the standard deviation equals the mean.
    assert statistics.stdev(gaps) == pytest.approx(0.25, rel=0.05)
    assert arrival_times(5, rate=4.0, seed=7) == times[:5]


def test_arrivals_do_not_move_when_the_shares_change(cache_dir: Path) -> None:
    plain = build_workload(40, cache_dir, seed=1, rate=2.0)
    dup = build_workload(40, cache_dir, seed=1, rate=2.0, exact_share=0.3, paraphrase_share=0.3)
    assert [r.arrival_s for r in plain] == [r.arrival_s for r in dup]


def test_a_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        arrival_times(3, rate=0.0)


def test_the_shares_of_repeats_are_what_was_asked(cache_dir: Path) -> None:
    workload = build_workload(100, cache_dir, seed=2, exact_share=0.25, paraphrase_share=0.15)
    kinds = Counter(r.kind for r in workload)
    assert kinds["exact_repeat"] == 25
    assert kinds["paraphrase"] == 15
    assert len(workload) == 100


def test_too_many_repeats_are_refused(cache_dir: Path) -> None:
    with pytest.raises(ValueError, match="can be replaced"):
        build_workload(10, cache_dir, exact_share=0.6, paraphrase_share=0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        build_workload(10, cache_dir, exact_share=-0.1)


def test_every_repeat_comes_after_its_original_and_asks_with_its_max_tokens(
    cache_dir: Path,
) -> None:
    workload = build_workload(
        150, cache_dir, seed=5, max_tokens=1_000, exact_share=0.3, paraphrase_share=0.3
    )
    for r in workload:
        earlier = workload[: r.index]
        if r.kind == "exact_repeat":
            assert any(o.prompt == r.prompt and o.max_tokens == r.max_tokens for o in earlier)
        elif r.kind == "paraphrase":
            originals = [o for o in earlier if o.kind != "paraphrase" and o.prompt != r.prompt]
            assert any(
                same_question(r.prompt, o.prompt) and o.max_tokens == r.max_tokens
                for o in originals
            )


def test_real_sharegpt_repeats_are_kept_and_marked(cache_dir: Path) -> None:
    workload = build_workload(
        N_PROMPTS + 3, cache_dir, max_tokens=1_000, exact_share=0.2, paraphrase_share=0.2
    )
    copies = [r for r in workload if " ".join(r.prompt.lower().split()) == DUPLICATE.lower()]
    assert len(copies) == 3
    assert [r.kind for r in copies] == ["fresh", "sharegpt_repeat", "sharegpt_repeat"]
    assert len({r.max_tokens for r in copies}) == 1  # the first copy's recorded length
    assert Counter(r.kind for r in workload)["sharegpt_repeat"] == 2


@pytest.mark.parametrize("question", QUESTIONS)
def test_every_rewording_keeps_the_question_for_llmqs_guard(question: str) -> None:
    for reword in REWORDINGS:
        paraphrase = reword(question)
        assert paraphrase != question
        assert same_question(paraphrase, question), repr(paraphrase)


def test_the_cache_hit_run_repeats_each_original_in_turn() -> None:
    originals, repeats = cache_hit_workload(10, 4)
    assert [r.prompt for r in originals] == [f"Name a colour ({k})." for k in range(4)]
    assert all(r.kind == "fresh" for r in originals)
    assert [r.prompt for r in repeats] == [originals[i % 4].prompt for i in range(10)]
    assert {(r.kind, r.max_tokens, r.arrival_s) for r in repeats} == {
        ("exact_repeat", originals[0].max_tokens, 0.0)
    }
    with pytest.raises(ValueError, match="at least one"):
        cache_hit_workload(0, 4)


def test_a_distinct_workload_has_none_of_sharegpts_repeats(cache_dir: Path) -> None:
    """The throughput comparison: llmq answered a repeat by coalescing, and its tokens
    counted as llmq's, while the engine generated it (+1.6% for llmq at 64 requests)."""
    workload = build_workload(N_PROMPTS + 1, cache_dir, distinct=True)
    assert {r.kind for r in workload} == {"fresh"}
    assert sum(" ".join(r.prompt.lower().split()) == DUPLICATE.lower() for r in workload) == 1
