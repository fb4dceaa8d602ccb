"""Near misses a review found the guard passing, and paraphrases the mends must keep."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.question import Question, numbers, unreadable
from streams.semantic_guard import ADDITION_SIMILARITY, mismatch, same_question

LENIENT = {"similarity": 0.9, "additions_from": ADDITION_SIMILARITY}
"""The lenient guard on a pair as similar as the review's (0.90)."""


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("What is 5\u00b2 + 3\u00b2?", "What is 52 + 32?"),
        ("What is 10\u00b2?", "What is 102?"),
        ("Is 2\u00b9\u2070 bigger than 3\u2075?", "Is 210 bigger than 35?"),
    ],
)
def test_a_superscript_is_an_exponent_not_a_digit(query: str, cached: str) -> None:
    assert mismatch(query, cached) == "numbers"
    assert mismatch(cached, query) == "numbers"


def test_a_subscript_after_a_digit_is_unreadable_and_after_a_letter_plain() -> None:
    assert unreadable("What is 10\u2082 in decimal?")
    assert not unreadable("Is CO\u2082 a greenhouse gas?")
    assert same_question("Is CO\u2082 a greenhouse gas?", "Is CO2 a greenhouse gas?")
    assert Question.read("What is x\u00b2y?").words == ("what", "is", "x", "^", "2", "y")


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("What is an IP address?", "What is my IP address?"),
        ("What is a blood type?", "What is my blood type?"),
        ("Who am I?", "Who are you?"),
        ("How old am I?", "How old are you?"),
        ("Am I a robot?", "Are you a robot?"),
        ("Are some mushrooms poisonous?", "Are mushrooms poisonous?"),
        ("Are any mushrooms poisonous?", "Are mushrooms poisonous?"),
    ],
)
def test_the_strict_guard_refuses_whose_who_and_how_many(query: str, cached: str) -> None:
    assert mismatch(query, cached) == "form"
    assert mismatch(cached, query) == "form"


@pytest.mark.parametrize(
    ("query", "cached", "check"),
    [
        ("Is coffee bad for you?", "Is coffee good for you?", "wording"),
        (
            "What is the worst programming language?",
            "What is the best programming language?",
            "wording",
        ),
        ("Can I receive blood after a tattoo?", "Can I give blood after a tattoo?", "wording"),
        ("How do I lose fat?", "How do I get fat?", "wording"),
        ("Should I avoid sunscreen on my baby?", "Should I use sunscreen on my baby?", "wording"),
        ("Where do salmon spawn?", "How do salmon spawn?", "focus"),
        ("Why do cats purr?", "How do cats purr?", "focus"),
        ("What is 5 squared?", "What is -5 squared?", "numbers"),
    ],
)
def test_the_lenient_guard_refuses_a_generic_word_swapped_a_question_word_or_a_sign(
    query: str, cached: str, check: str
) -> None:
    assert mismatch(query, cached, **LENIENT) == check
    assert mismatch(cached, query, **LENIENT) == check


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Which people built the Giza pyramids?", "Who built the pyramids of Giza?"),
        ("Explain the process of photosynthesis.", "How does photosynthesis work?"),
    ],
)
def test_the_lenient_guard_still_takes_a_question_word_by_its_noun_and_a_word_added(
    query: str, cached: str
) -> None:
    """ "Which people" asks for a person as "who" does; "process" takes no word's place."""
    assert same_question(query, cached, **LENIENT)
    assert same_question(cached, query, **LENIENT)


def test_a_minus_sign_between_numbers_is_no_sign_of_the_second() -> None:
    difference, negative = Question.read("What is 10 - 5?"), Question.read("Is -5 < 3?")
    assert numbers(difference, difference.words) == Counter({"10": 1, "5": 1})
    assert numbers(negative, negative.words) == Counter({"-5": 1, "3": 1})
