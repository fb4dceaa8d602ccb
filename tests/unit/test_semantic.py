"""The semantic cache's parts that need no model and no Redis: scope, guard, mirror."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from schemas.request import InferenceRequest
from streams.question import Question, unreadable
from streams.semantic import MAX_TEXT_CHARS, semantic_key
from streams.semantic_guard import ADDITION_SIMILARITY, mismatch, same_question
from streams.semantic_index import MIN_ROWS, ScopeMirror
from tools.bench.semantic_quality import PAIRS, load

MODEL = "smollm2-135m"


def _request(question: str = "What is the capital of France?", **changes: Any) -> InferenceRequest:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": question},
        ],
        "max_tokens": 32,
        "temperature": 0,
        **changes.pop("body", {}),
    }
    return InferenceRequest.model_validate(
        {"correlation_id": "c-1", "tenant": "acme", "body": body, **changes}
    )


def _scope(request: InferenceRequest, model: str = MODEL) -> str:
    key = semantic_key(request, model)
    assert key is not None
    return key[0]


BASE = _scope(_request())


def test_the_question_is_the_text_and_does_not_change_the_scope() -> None:
    assert semantic_key(_request("Whats France's capital?"), MODEL) == (
        BASE,
        "Whats France's capital?",
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"tenant": "globex"},
        {"body": {"max_tokens": 33}},
        {"body": {"temperature": 0.5, "seed": 1}},
        {"body": {"top_p": 0.9}},
        {"body": {"stop": ["END"]}},
        {"body": {"seed": 7}},
        {"body": {"presence_penalty": 0.5}},
        {"body": {"frequency_penalty": 0.5}},
        {"body": {"logprobs": True}},
    ],
)
def test_tenant_and_sampling_parameters_change_the_scope(changes: dict[str, Any]) -> None:
    assert _scope(_request(**changes)) != BASE


def test_the_model_changes_the_scope() -> None:
    assert _scope(_request(), "other-model") != BASE


@pytest.mark.parametrize(
    "earlier",
    [
        [{"role": "system", "content": "Be verbose."}],
        [{"role": "system", "content": "Be brief."}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello! How can I help?"},
        ],
    ],
)
def test_earlier_messages_change_the_scope(earlier: list[dict[str, str]]) -> None:
    messages = [*earlier, {"role": "user", "content": "What is the capital of France?"}]
    assert _scope(_request(body={"messages": messages})) != BASE


def test_the_envelope_outside_the_answer_does_not_change_the_scope() -> None:
    changed = _request(correlation_id="c-2", lane="batch", reply_to="acme.replies")
    assert _scope(changed) == BASE


@pytest.mark.parametrize(
    "request_",
    [
        _request(
            body={
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hey"},
                ]
            }
        ),
        _request(body={"temperature": 0.7}),
        _request(cache="off"),
        _request("   "),
        _request("x" * (MAX_TEXT_CHARS + 1)),
        _request("\u6cd5\u56fd\u7684\u9996\u90fd\u662f\u4ec0\u4e48\uff1f"),
        _request("Where is Z\u00fcrich?"),
        _request(
            body={
                "messages": [{"role": "user", "content": "The capital of France is"}],
                "raw_prompt": True,
            }
        ),
    ],
    ids=[
        *("trailing-assistant", "sampled", "cache-off", "blank", "too-long", "chinese"),
        *("umlaut", "raw-prompt"),
    ],
)
def test_no_key_when_there_is_nothing_to_compare(request_: InferenceRequest) -> None:
    assert semantic_key(request_, MODEL) is None


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("Can you tell me how to boil an egg?", "How do you boil an egg?"),
        ("What is an API?", "Explain what an API is, please."),
        (
            "Whats the time complexity of binary search",
            "What is the time complexity of binary search?",
        ),
        ("wat is the capitl of australia", "What is the capital of Australia?"),
        ("how many legs do spiders have", "How many legs does a spider have?"),
        ("Thank you! How many ounces are in a pound?", "how many ounces in a pound"),
        ("Why don\u2019t cats like water?", "Why don't cats like water?"),
        ("What is the national animal of Scotland?", "Scotland's national animal is what?"),
        ("When did the Titanic sink?", "In what year did the Titanic sink?"),
        ("What causes migraines?", "Why do people get migraines?"),
        (
            "What is the difference between TCP and UDP?",
            "What is the difference between UDP and TCP?",
        ),
        (
            "What is the capital of France? (ref 1a2b3c4d)",
            "what's the capital of france, ref 1a2b3c4d??",
        ),
        (
            "How long do I bake chicken at 200\u00b0C?",
            "At 200\u00b0C, how long should I bake chicken?",
        ),
    ],
)
def test_the_guard_accepts_politeness_typos_inflections_and_reordering(
    query: str, cached: str
) -> None:
    assert same_question(query, cached)
    assert same_question(cached, query)


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("What is the capital of France?", "What is the capital of Finland?"),
        ("Convert 5 miles to kilometers.", "Convert 5 kilometers to miles."),
        ("What is 2 to the power of 10?", "What is 10 to the power of 2?"),
        ("Which vitamins are water-soluble?", "Which vitamins are not water-soluble?"),
        ("Fibonacci numbers with recursion", "Fibonacci numbers without recursion"),
        ("Flights to Paris", "Flights from Paris"),
        ("What is the maximum of a 32-bit integer?", "What is the maximum of a 64-bit integer?"),
        ("Who was the first president?", "Who was the second president?"),
        ("What port does HTTP use?", "What port does HTTPS use?"),
        ("Is python2 still supported?", "Is python3 still supported?"),
        ("What does a == b do?", "What does a != b do?"),
        ("Who is Jordan?", "What is Jordan?"),
        ("What is the boiling point of water?", "What is the boiling point of salt water?"),
        ("Is the Moon bigger than Mercury?", "Is Mercury bigger than the Moon?"),
        ("Who succeeded Queen Victoria?", "Who did Queen Victoria succeed?"),
        (
            "How do I copy a file from the host to a container?",
            "How do I copy a file from a container to the host?",
        ),
        (
            "What are the advantages of nuclear power?",
            "What are the disadvantages of nuclear power?",
        ),
        (
            "Which side of the road do they drive on in Ireland?",
            "Which side of the road do they drive on in Iceland?",
        ),
        ("Who invented the light bulb?", "When was the light bulb invented?"),
        (
            "How tall is the Statue of Liberty in feet?",
            "How tall is the Statue of Liberty in meters?",
        ),
        ("What cron expression runs a job at 3 AM?", "What cron expression runs a job at 3 PM?"),
        ("I'm 34. How much should I save?", "I'm 64. How much should I save?"),
        ("What is the mass of a proton?", "What is the mass of a photon?"),
        ("What is the largest planet?", "What is the largest plane?"),
        ("What is the largest ocean?", "What is a large ocean?"),
        ("Is ten bigger than two?", "Is two bigger than ten?"),
        ("What is 10/2?", "What is 10-2?"),
        ("What year was Obama born?", "What day was Obama born?"),
        ("How old is my son?", "How old is my brother's son?"),
        (
            "Rewrite the email below.\nHi team, the launch moves to May.",
            "Rewrite the email below more politely.\nHi team, the launch moves to May.",
        ),
        (
            "I need a recipe for lasagna. Can you help?",
            "I need a recipe for vegan lasagna. Can you help?",
        ),
        ("What do sharks eat?", "What eats sharks?"),
        ("Which animals do lions hunt?", "Which animals hunt lions?"),
        ("Who was killed by Brutus?", "Who killed Brutus?"),
        ("Are all squares rectangles?", "Are all rectangles squares?"),
        ("Is Pluto a planet?", "Was Pluto a planet?"),
        ("Should I take ibuprofen?", "Can I take ibuprofen?"),
        ("What is your name?", "What is my name?"),
        ("How do I learn English?", "How do I teach English?"),
        ("How many ounces in a pound?", "How many pounds in an ounce?"),
        ("Can I take ibuprofen and acetaminophen?", "Can I take ibuprofen or acetaminophen?"),
        ("Who was this song written by?", "Who was this song written for?"),
        ("Does acupuncture work?", "How does acupuncture work?"),
        ("Did the Fed raise interest rates?", "Will the Fed raise interest rates?"),
        ("Can cats eat chocolate?", "Do cats eat chocolate?"),
        ("Do they love me?", "Do you love me?"),
        ("How do I get a refund?", "How do I give a refund?"),
        ("Do you know Python?", "Do you like Python?"),
        ("Is it okay to drink so much water?", "Is it okay to drink water?"),
        ("Can I drink at twenty-one?", "Can I drink at twenty?"),
        ("What does a[1:] return?", "What does a[:1] return?"),
        ("What is the boiling point of water?", "Why does water boil?"),
        ("Did Apple buy Beats?", "Was Apple bought by Beats?"),
        ("I'm pregnant. Can I drink coffee?", "Can I drink coffee?"),
        ("Is 3 p.m. too late for coffee?", "Is 3 a.m. too late for coffee?"),
        (
            "What should I buy my brother for Christmas?",
            "What should I buy my sister for Christmas?",
        ),
        ("Is vaping bad for you?", "Is vaping worse for you?"),
        ("How do I install openssl?", "How do I install openssh?"),
        ("What does grep -i do?", "What does grep -I do?"),
        (
            "What is the exchange rate between USD and EUR?",
            "What is the exchange rate between EUR and USD?",
        ),
        (
            "\u4ec0\u4e48\u662f\u91cf\u5b50\u8ba1\u7b97\uff1f",
            "\u4ec0\u4e48\u662f\u673a\u5668\u5b66\u4e60\uff1f",
        ),
        ("What does this emoji mean: \U0001f600", "What does this emoji mean: \U0001f621"),
    ],
)
def test_the_guard_rejects_what_changes_the_answer(query: str, cached: str) -> None:
    assert not same_question(query, cached)
    assert not same_question(cached, query)


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("How often should I water a cactus?", "How frequently do cacti need watering?"),
        ("What documents do I need to rent a car?", "Which documents are needed to hire a car?"),
        (
            "I've been arguing with my roommate all evening. How many bones are in the adult body?",
            "How many bones are in the adult body?",
        ),
    ],
)
def test_synonyms_and_context_pass_only_the_lenient_guard(query: str, cached: str) -> None:
    assert not same_question(query, cached, 0.9)
    assert same_question(query, cached, 0.9, ADDITION_SIMILARITY)
    assert same_question(cached, query, 0.9, ADDITION_SIMILARITY)


def test_a_word_added_to_the_question_passes_only_the_lenient_guard() -> None:
    short, longer = "What is a dividend?", "What does dividend mean in investing?"
    assert mismatch(longer, short, 0.9) == "addition"
    assert same_question(longer, short, 0.9, additions_from=ADDITION_SIMILARITY)
    assert not same_question(longer, short, ADDITION_SIMILARITY - 0.01, ADDITION_SIMILARITY)


def test_mismatch_names_the_check_that_failed() -> None:
    assert mismatch("How many miles is a marathon?", "How many kilometers is a marathon?") == (
        "units"
    )
    assert mismatch("Which birds can fly?", "Which birds cannot fly?") == "negation"
    assert mismatch("How do I install numpy?", "How do I uninstall numpy?") == "wording"
    assert mismatch("How do I boil an egg?", "What's the best way to boil eggs?") is None


def _unit(*values: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    vector = np.array(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


def test_the_mirror_finds_the_most_similar_first_above_the_threshold() -> None:
    mirror = ScopeMirror(capacity=10, dimensions=2)
    mirror.put("east", "e", _unit(1, 0))
    mirror.put("north", "n", _unit(0, 1))
    mirror.put("north-east", "ne", _unit(1, 1))
    found = mirror.search(_unit(1, 0.1), threshold=0.5, limit=8)
    assert [fp for fp, _, _ in found] == ["east", "north-east"]
    assert found[0][1] == "e"
    assert found[0][2] == pytest.approx(float(_unit(1, 0.1) @ _unit(1, 0)))
    assert len(mirror.search(_unit(1, 0.1), threshold=0.5, limit=1)) == 1
    assert mirror.search(_unit(-1, 0), threshold=0.5, limit=8) == []
    assert ScopeMirror(capacity=10, dimensions=2).search(_unit(1, 0), 0.0, 8) == []


def test_removal_moves_the_last_row_and_keeps_the_rest_findable() -> None:
    mirror = ScopeMirror(capacity=100, dimensions=2)
    angles = np.linspace(0, np.pi / 2, 40)
    for i, angle in enumerate(angles):
        mirror.put(f"fp{i}", f"t{i}", _unit(np.cos(angle), np.sin(angle)))
    for i in range(0, 40, 3):
        mirror.remove(f"fp{i}")
    mirror.remove("never-added")
    assert len(mirror) == 40 - 14
    for i, angle in enumerate(angles):
        found = mirror.search(_unit(np.cos(angle), np.sin(angle)), threshold=0.9999, limit=1)
        expected = [] if i % 3 == 0 else [f"fp{i}"]
        assert [fp for fp, _, _ in found] == expected
        assert (f"fp{i}" in mirror) == (i % 3 != 0)


def test_a_mirror_emptied_by_expiry_gives_its_memory_back_and_keeps_the_rest_findable() -> None:
    """A scope's arrays kept their largest size for good: a burst of 100k questions held
    157 MiB after all of them expired, past what LLMQ_SEMANTIC_MAX_MIRRORED counts."""
    mirror = ScopeMirror(capacity=10_000, dimensions=384)
    for i in range(10_000):
        mirror.put(f"fp{i}", f"t{i}", _unit(*np.eye(384, dtype=np.float32)[i % 384]), i)
    full = mirror.nbytes
    mirror.expire(before_ms=9_900)  # 100 left
    assert len(mirror) == 100 and mirror.nbytes <= full * 4 * 100 // 10_000
    for i in range(9_900, 10_000):
        assert f"fp{i}" in mirror
    found = mirror.search(_unit(*np.eye(384, dtype=np.float32)[9_999 % 384]), 0.99, 10)
    assert {fp for fp, _, _ in found} == {
        f"fp{i}" for i in range(9_900, 10_000) if i % 384 == 9_999 % 384
    }
    mirror.expire(before_ms=10_000)
    assert len(mirror) == 0 and mirror.nbytes == MIN_ROWS * (384 * 4 + 8)


def test_beyond_capacity_the_oldest_entry_goes() -> None:
    mirror = ScopeMirror(capacity=3, dimensions=2)
    for name in ("a", "b", "c"):
        mirror.put(name, name, _unit(1, 0))
    mirror.put("a", "a again", _unit(0, 1))  # replacing makes "a" the newest
    mirror.put("d", "d", _unit(1, 1))
    assert len(mirror) == 3
    assert "b" not in mirror
    assert {"a", "c", "d"} <= {fp for fp, _, _ in mirror.search(_unit(1, 1), 0.0, 8)}
    assert mirror.search(_unit(0, 1), 0.99, 8)[0][:2] == ("a", "a again")
    assert mirror.nbytes == 3 * 2 * 4 + 3 * 8


LABELLED = load(PAIRS)


def test_every_labelled_question_is_the_same_as_itself() -> None:
    """Repeated words (context, articles) must not read as a swap or a change of direction."""
    questions = sorted({pair[side] for pair in LABELLED for side in ("a", "b")})
    assert [(q, mismatch(q, q)) for q in questions if mismatch(q, q)] == []


@pytest.mark.parametrize(
    "text",
    [
        "Why don\u2019t cats like water?",
        "How long do I bake chicken at 200\u00b0C?",
        "\uff37hat is \u2460 plus two?",  # compatibility forms NFKC reads as ASCII
        "Is 5 \u00d7 3 \u2264 20?",
        "Where is Z\u00fcrich?",
        "Is this good? \U0001f600",
    ],
)
def test_what_the_semantic_cache_skips_is_what_the_guard_cannot_read(text: str) -> None:
    assert unreadable(text) == Question.read(text).unread


def test_the_guard_decides_the_same_either_way_round() -> None:
    """Cached `a` asked `b` and cached `b` asked `a` get the same verdict."""
    one_way = [
        pair["a"]
        for pair in LABELLED
        if (mismatch(pair["a"], pair["b"]) is None) != (mismatch(pair["b"], pair["a"]) is None)
    ]
    assert one_way == []


@pytest.mark.timeout(60)
def test_a_long_repetitive_text_is_judged_quickly() -> None:
    """The guard runs on every candidate of a lookup: no input may take it seconds (it took
    9 s on 2,000 characters of this before the checks worked on each distinct word once: on
    20,000 it would run past the timeout; a tenth of a second now)."""
    assert mismatch(("go to it " * 2500)[:20_000], ("go to him " * 2500)[:20_000]) is not None
