"""Safe prompt compression: whitespace and invisible-character normalisation only.

Outside fenced code blocks and inline code spans: trailing whitespace at line ends goes,
runs of blank lines become one, runs of spaces between words become one space (leading
indentation stays), the invisible U+200B, U+FEFF and U+2060 go, and so does the blank
lines around the whole message. Code blocks and spans stay byte-identical, and so does any
run of blanks that holds a tab (tab-separated columns). Every result is checked: the same
non-blank characters in the same order (less the invisibles) and the same code, or the
message is left as it was. A tool's result and an assistant's tool calls are data, not
prose, and stay as they are.
"""

from __future__ import annotations

import bisect
import logging
import re
from dataclasses import dataclass

from schemas.request import ChatMessage

log = logging.getLogger(__name__)

INVISIBLE = re.compile("[\u200b\ufeff\u2060]")
"""Zero-width space, BOM / zero-width no-break space, word joiner: no meaning in a prompt.
The zero-width (non-)joiners shape scripts and emoji, so they stay."""
FENCE = re.compile(r"[ \t]*(`{3,}|~{3,})")
"""A line opening a fenced code block (any indentation: protecting too much is safe)."""
BACKTICKS = re.compile(r"`+")
INVISIBLE_BETWEEN_WORDS = re.compile(f"(?<!`){INVISIBLE.pattern}(?!`)")
"""An invisible that may go: not next to a backtick, lest two code spans merge into one."""
SPACES = re.compile(r"(?<=\S) {2,}(?=\S)")
"""Two or more spaces between words (not indentation, not next to a tab)."""
BLANKS = re.compile(r"\s+")
TRAILING = " \t\r\f\v"


@dataclass
class _Chunk:
    """Consecutive lines of a message: prose, or one fenced code block."""

    lines: list[str]
    code: bool


def compress(messages: list[ChatMessage]) -> list[ChatMessage]:
    """The messages with their content normalised; `messages` itself when nothing changed."""
    out = [_compress_message(m) for m in messages]
    if all(new is old for new, old in zip(out, messages, strict=True)):
        return messages
    return out


def compress_text(text: str) -> str:
    """One message's content normalised, or `text` itself when that is unsafe or a no-op."""
    chunks = _split(text)
    for chunk in chunks:
        if not chunk.code:
            chunk.lines = _prose(chunk.lines)
    _trim(chunks)
    result = "\n".join(line for chunk in chunks for line in chunk.lines)
    if result == text:
        return text
    if not _same_meaning(text, result):
        log.warning("prompt compression skipped a message: it would not preserve the text")
        return text
    return result


def _compress_message(message: ChatMessage) -> ChatMessage:
    if message.role == "tool" or message.tool_calls:  # data, not prose: spaces may count
        return message
    content = compress_text(message.content)
    if content is message.content:
        return message
    return message.model_copy(update={"content": content})


def _split(text: str) -> list[_Chunk]:
    """Prose and fenced code blocks, in order; "\\n".join of all lines gives `text` back.
    A block runs to a closing fence of the same character, at least as long, or to the end."""
    chunks = [_Chunk([], code=False)]
    fence = ""
    for line in text.split("\n"):
        if not fence:
            opening = FENCE.match(line)
            if opening:
                fence = opening.group(1)
                chunks.append(_Chunk([], code=True))
            chunks[-1].lines.append(line)
            continue
        chunks[-1].lines.append(line)
        closing = line.strip(" \t")
        if len(closing) >= len(fence) and closing == fence[0] * len(closing):
            fence = ""
            chunks.append(_Chunk([], code=False))
    return [c for c in chunks if c.lines]


def _prose(lines: list[str]) -> list[str]:
    """Normalise prose lines; a run of blank lines becomes one."""
    out: list[str] = []
    for raw in lines:
        line = _line(raw)
        if line or not out or out[-1]:
            out.append(line)
    return out


def _line(line: str) -> str:
    """One prose line: invisibles out, inner spaces collapsed, trailing blanks out."""
    line = _outside_code(line, INVISIBLE_BETWEEN_WORDS, "")
    line = _outside_code(line, SPACES, " ")
    return line.rstrip(TRAILING)


def _outside_code(line: str, pattern: re.Pattern[str], replacement: str) -> str:
    """`pattern` replaced in `line` except inside its inline code spans."""
    spans = _spans(line)
    if not spans:
        return pattern.sub(replacement, line)
    starts = [start for start, _ in spans]

    def replace(match: re.Match[str]) -> str:
        k = bisect.bisect_right(starts, match.start()) - 1
        return match.group() if k >= 0 and match.start() < spans[k][1] else replacement

    return pattern.sub(replace, line)


def _spans(line: str) -> list[tuple[int, int]]:
    """Inline code spans as (start, end): a run of backticks up to the next run of the same
    length (CommonMark). Linear: a regex with a backreference is quadratic on hostile input."""
    runs = [(m.start(), m.end()) for m in BACKTICKS.finditer(line)]
    closer: list[int | None] = [None] * len(runs)
    latest: dict[int, int] = {}  # run length -> index of the nearest such run to the right
    for i in range(len(runs) - 1, -1, -1):
        length = runs[i][1] - runs[i][0]
        closer[i] = latest.get(length)
        latest[length] = i
    spans = []
    i = 0
    while i < len(runs):
        j = closer[i]
        if j is None:
            i += 1
        else:
            spans.append((runs[i][0], runs[j][1]))
            i = j + 1
    return spans


def _trim(chunks: list[_Chunk]) -> None:
    """Drop the (normalised, so empty) blank lines that open and close the message."""
    if not chunks[0].code:
        while chunks[0].lines and not chunks[0].lines[0]:
            chunks[0].lines.pop(0)
    if not chunks[-1].code:
        while chunks[-1].lines and not chunks[-1].lines[-1]:
            chunks[-1].lines.pop()


def _same_meaning(before: str, after: str) -> bool:
    """The invariant: the same non-blank characters in order (invisibles aside), and
    byte-identical code blocks and spans, found anew in each text."""
    return _skeleton(before) == _skeleton(after) and _code(before) == _code(after)


def _skeleton(text: str) -> str:
    return BLANKS.sub("", INVISIBLE.sub("", text))


def _code(text: str) -> list[str]:
    found = []
    for chunk in _split(text):
        if chunk.code:
            found.append("\n".join(chunk.lines))
        else:
            found += [line[a:b] for line in chunk.lines for a, b in _spans(line)]
    return found
