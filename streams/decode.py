"""Reading a raw record's JSON: strictly for admission, leniently to salvage a reply address."""

from __future__ import annotations

import json
import math

from schemas.redact import MAX_NAME_CHARS


def decode(raw: bytes | None, lenient: bool = False) -> object:
    """UTF-8 JSON, a leading BOM allowed (RFC 8259): json.loads would guess UTF-16/32 from
    bytes. Lenient (for salvage) reads past bad bytes and bad field names. Raises ValueError
    (no value, bad bytes, bad JSON) or RecursionError (deep nesting)."""
    if raw is None:
        raise ValueError("the record has no value (a tombstone)")
    text = raw.decode("utf-8-sig", "replace" if lenient else "strict")
    return json.loads(text, parse_int=_integer, object_pairs_hook=None if lenient else _object)


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
