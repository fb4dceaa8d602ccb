"""The quality benchmark's pure parts: the labelled set's shape, what counts as a right
answer, the figures of a setting and the Pareto front."""

from __future__ import annotations

import pytest

from schemas.result import CacheStatus, InferenceResult, Timings
from schemas.route import Route
from tests.unit.stages import answer
from tools.bench.quality import Outcome, Setting, load, outcome, pareto, right, table


def test_the_set_has_unique_questions_each_with_a_paraphrase_and_answers() -> None:
    questions = load()
    assert len(questions) >= 60
    assert len({q["id"] for q in questions}) == len(questions)
    assert len({q["question"] for q in questions}) == len(questions)
    for q in questions:
        assert q["answers"] and all(a.strip() for a in q["answers"])
        assert q["paraphrase"] != q["question"]


@pytest.mark.parametrize(
    ("text", "answers", "expected"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("paris", ["Paris"], True),
        ("Parisian cafés are nice.", ["Paris"], False),
        ("A spider has eight legs.", ["8", "eight"], True),
        ("It has 18 legs.", ["8", "eight"], False),
        ("Water is H2O.", ["H2O"], True),
        ("Leonardo da Vinci painted it.", ["da Vinci"], True),
        ("Pokémon", ["pokemon"], True),
        (None, ["Paris"], False),
    ],
)
def test_an_answer_is_right_when_it_says_an_accepted_answer_as_words(
    text: str | None, answers: list[str], expected: bool
) -> None:
    assert right(text, answers) is expected


def _result(
    text: str, ms: float, cost: float, cache: CacheStatus = CacheStatus.NONE
) -> InferenceResult:
    return InferenceResult(
        correlation_id="c",
        tenant="t",
        status="ok",
        response=answer(text),
        cache=cache,
        route=Route(requested="auto", chain=["a"], escalated=cost > 0.5),
        cost_usd=cost,
        timings=Timings(total_ms=ms),
    )


def test_a_settings_figures() -> None:
    results = [
        _result("Paris", 100, 0.1),
        _result("Lyon", 300, 0.9),
        _result("Paris", 5, 0.0, CacheStatus.EXACT),
        _result("Paris!", 200, 0.2),
    ]
    got = outcome(Setting("s", "auto", caches=True), results, [["Paris"]] * 4)
    assert (got.answers, got.right, got.cached, got.escalated, got.errors) == (4, 3, 1, 1, 0)
    assert got.usd_per_answer == pytest.approx(0.3)
    assert (got.latency_p50_s, got.latency_p95_s) == (0.2, 0.3)
    assert got.quality_low < 0.75 < got.quality_high


def _outcome(name: str, right_: int, usd: float, p50: float) -> Outcome:
    return Outcome(name, 100, right_, 0.0, 1.0, usd, p50, p50, 0, 0, 0)


def test_the_front_holds_the_settings_nothing_beats() -> None:
    marked = pareto(
        [
            _outcome("cheap", 50, 0.1, 1.0),
            _outcome("good", 80, 0.5, 1.0),
            _outcome("worse and dearer", 50, 0.5, 1.0),
            _outcome("fast", 40, 0.5, 0.1),
            _outcome("same as cheap", 50, 0.1, 1.0),
        ]
    )
    front = {o.setting for o in marked if o.pareto}
    assert front == {"cheap", "good", "fast", "same as cheap"}
    assert "| **cheap** |" in table(marked) and "| worse and dearer |" in table(marked)
