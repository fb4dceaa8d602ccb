"""Reading a raw record's JSON: strictly for admission, leniently to salvage a reply address."""

from __future__ import annotations

import json
import math
import re

from schemas.redact import MAX_NAME_CHARS


def decode(raw: bytes | None, lenient: bool = False) -> object:
    """UTF-8 JSON, a leading BOM allowed (RFC 8259): json.loads would guess UTF-16/32 from
    bytes. Lenient (for salvage) reads past bad bytes and bad field names. Raises ValueError
    (no value, bad bytes, bad JSON) or RecursionError (deep nesting)."""
    if raw is None:
        raise ValueError("the record has no value (a tombstone)")
    text = raw.decode("utf-8-sig", "replace" if lenient else "strict")
    return json.loads(text, parse_int=_integer, object_pairs_hook=None if lenient else _object)


STRUCTURE = re.compile(r'["{}\[\]:,]')
"""What a scan of JSON's structure stops at; all else (numbers, literals, blanks) it skips."""
_STRINGS = json.JSONDecoder()


def top_level_strings(raw: bytes) -> dict[str, str] | None:
    """The string fields of a JSON object read without descending into its nested values,
    for a record too deep for json (RecursionError); None for anything but one whole object."""
    text = raw.decode("utf-8-sig", "replace")
    if not text.lstrip().startswith("{"):
        return None
    fields: dict[str, str] = {}
    pair: list[str] = []
    """The top level's tokens since its last comma: a string is its text after a '"'."""
    depth, at = 0, 0
    while match := STRUCTURE.search(text, at):
        token, at = match.group(), match.end()
        if token == '"':
            try:
                string, at = _STRINGS.raw_decode(text, match.start())
            except ValueError:
                return None
            token += string
        depth += (token in "{[") - (token in "}]")
        if depth == 0:
            return fields if not text[at:].strip() else None
        if depth == 1:  # four tokens are no `"key": "value"`: more need not be kept
            pair = [] if token in ",{" else [*pair, token][:4]
        if len(pair) == 3 and pair[1] == ":" and pair[0][0] == pair[2][0] == '"':
            fields[pair[0][1:]] = pair[2][1:]
    return None


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose field names are text (pydantic cannot say which one is not)."""
    for key, _ in pairs:
        try:
            key.encode()
        except UnicodeEncodeError:
            raise ValueError(
                f"field name {key[:MAX_NAME_CHARS]!a} is not Unicode text (a lone surrogate)"
            ) from None
    return dict(pairs)


def _integer(digits: str) -> int | float:
    """JSON allows any number of digits, int() refuses more than 4300: such a number is
    infinite for every field, which validation then rejects by name."""
    try:
        return int(digits)
    except ValueError:
        return -math.inf if digits.startswith("-") else math.inf
