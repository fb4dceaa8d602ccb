"""Prompt compression: each rule, what it must never touch, properties over generated text,
and what it saves on real ShareGPT prompts."""

from __future__ import annotations

import logging
import random
import re

import pytest

from schemas.request import ChatMessage
from streams.compress import compress, compress_text
from tools.sharegpt import first_turns
from tools.stack.settings import LocalSettings

INVISIBLES = "\u200b\ufeff\u2060"
FENCED = "```python\ndef f(x):\n    y  =  x   # aligned  \n\n\n\n    return y\u200b \n```"


def skeleton(text: str) -> str:
    """Non-blank characters in order, the removable invisibles aside: what must not change."""
    return re.sub(r"\s+", "", re.sub(f"[{INVISIBLES}]", "", text))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("Hello   world", "Hello world"),
        ("line one   \nline two\t \r\nthree", "line one\nline two\nthree"),
        ("a\n\n\n\n\nb\n\n\nc\n\nd", "a\n\nb\n\nc\n\nd"),
        ("a\n \n\t\n  \nb", "a\n\nb"),
        ("\n\n  \n  Hi there.  \n\n", "  Hi there."),
        ("zero\u200bwidth\ufeff and\u2060 joiner", "zerowidth and joiner"),
        ("  - item  one\n    - nested   item", "  - item one\n    - nested item"),
        ("col1\tcol2\t\tcol3", "col1\tcol2\t\tcol3"),
        ("name  \tvalue", "name  \tvalue"),
        ("run `a  b` and `` c   d `` now  please", "run `a  b` and `` c   d `` now please"),
        ("`a`\u200b`b` \u200b `c`  x", "`a`\u200b`b` `c` x"),
        ("one ` unmatched   backtick", "one ` unmatched backtick"),
        ("``a `  b``  and ` c  `", "``a `  b`` and ` c  `"),
    ],
)
def test_rules(before: str, after: str) -> None:
    assert compress_text(before) == after
    assert skeleton(after) == skeleton(before)


def test_fenced_code_stays_byte_identical() -> None:
    text = f"Fix   this:  \n\n\n\n{FENCED}\n\n\n\nThanks   a lot.  "
    assert compress_text(text) == f"Fix this:\n\n{FENCED}\n\nThanks a lot."


def test_tilde_fences_longer_closers_and_nested_backticks() -> None:
    block = "~~~~\n```\n  a   b  \n```\n~~~\n\n\n x  y \n~~~~~"
    text = f"Intro   text\n{block}\nafter   it"
    assert compress_text(text) == f"Intro text\n{block}\nafter it"


def test_an_unclosed_fence_protects_the_rest_of_the_message() -> None:
    text = "See   below\n```\nx  =  1   \n\n\n\n"
    assert compress_text(text) == "See below\n```\nx  =  1   \n\n\n\n"


def test_zero_width_joiners_and_other_spaces_stay() -> None:
    text = "family \U0001f468\u200d\U0001f469\u200d\U0001f467 and\u200cnon-joiner a\xa0\xa0b"
    assert compress_text(text) is text


def test_unsafe_results_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    # Removing the zero-width space would turn this line into a code fence.
    text = "\u200b~~~\ncode   here"
    with caplog.at_level(logging.WARNING):
        assert compress_text(text) is text
    assert "would not preserve the text" in caplog.text


@pytest.mark.timeout(60)
def test_hostile_backtick_runs_take_linear_time() -> None:
    # Runs of 1, 2, ..., 2999 backticks: none closes another (a backreferencing regex took
    # seconds at 599; at 2999 it would run past the timeout; about half a second now).
    line = "".join("`" * n + "a  " for n in range(1, 3000))
    assert compress_text(line) == line.replace("  ", " ").rstrip()


def test_compress_keeps_unchanged_messages_and_lists() -> None:
    clean = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="Hi."),
    ]
    assert compress(clean) is clean
    messy = [clean[0], ChatMessage(role="user", content="  Hi   there.\n\n\n\n")]
    out = compress(messy)
    assert out[0] is messy[0]
    assert out[1] == ChatMessage(role="user", content="  Hi there.")
    assert compress(out) is out


def _generated(rng: random.Random) -> tuple[str, list[str]]:
    """A message of junk-laden prose around code blocks, and those blocks' exact text."""
    words = ["alpha", "b", "`x  y`", "~x", "-", "1.", "#", "é", "\u200d", "\xa0", "}"]
    blanks = [" ", "  ", "   ", "\t", " \t ", "\r", "\n", "\n\n\n", " \n  \n", *INVISIBLES]
    pieces: list[str] = []
    blocks: list[str] = []
    for _ in range(rng.randint(0, 40)):
        if rng.random() < 0.06:
            fence = rng.choice(["```", "~~~", "````"])
            body = "".join(rng.choice(words + blanks) for _ in range(rng.randint(0, 12)))
            block = f"{rng.choice(['', ' ', '  '])}{fence}{rng.choice(['', 'py', ' c '])}\n"
            block += f"{body.replace(fence[0] * 3, '')}\n{fence}{rng.choice(['', '  '])}"
            blocks.append(block)
            pieces.append(f"\n{block}\n")
        else:
            pieces.append(rng.choice(words if rng.random() < 0.5 else blanks))
    return "".join(pieces), blocks


def test_properties_over_generated_messages() -> None:
    rng = random.Random(20261121)
    changed = 0
    for _ in range(5_000):
        text, blocks = _generated(rng)
        once = compress_text(text)
        changed += once is not text
        assert len(once) <= len(text)
        assert skeleton(once) == skeleton(text)
        assert compress_text(once) is once  # idempotent, and a no-op returns its input
        position = 0
        for block in blocks:
            found = once.find(block, position)
            assert found >= 0, (text, once, block)
            position = found + len(block)
    assert changed > 4_000  # the generator is junk-laden: the properties were exercised


def test_sharegpt_first_turns() -> None:
    prompts = [p.text for p in first_turns(LocalSettings().cache_dir)[:2_000]]
    compressed = [compress_text(p) for p in prompts]
    before = sum(map(len, prompts))
    after = sum(map(len, compressed))
    changed = sum(c is not p for c, p in zip(compressed, prompts, strict=True))
    print(
        f"\nShareGPT, {len(prompts)} first turns: {before} -> {after} characters, "
        f"{before - after} saved ({100 * (before - after) / before:.2f}%), "
        f"{changed} prompts changed"
    )
    for prompt, short in zip(prompts, compressed, strict=True):
        assert len(short) <= len(prompt)
        assert skeleton(short) == skeleton(prompt)
        assert compress_text(short) is short


def test_a_tools_result_and_an_assistants_calls_stay_as_they_are() -> None:
    """Data, not prose: the spaces inside a JSON string are part of a value."""
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    spaced = '{"text": "a   b"}'
    messages = [
        ChatMessage(role="user", content="a   b"),
        ChatMessage.model_validate({"role": "assistant", "content": spaced, "tool_calls": [call]}),
        ChatMessage(role="tool", content=spaced, tool_call_id="c1"),
    ]
    assert [m.content for m in compress(messages)] == ["a b", spaced, spaced]
