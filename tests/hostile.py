"""Hypothesis strategies for hostile llmq.requests records, each with what admission owes it.

Shared by the unit fuzz tests (admission on fakes) and the integration fuzz test (the real
stack). A record is drawn with a placeholder correlation id (CID) that `renamed` replaces,
so a run on a shared stack can give every record its own.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from schemas.names import RESULTS
from schemas.request import MAX_RECORD_BYTES

CID = "fuzz-cid-00000000"
"""The correlation id every drawn record carries, until `renamed`."""
TENANT = "fuzz"
"""The tenant of every drawn record that names one."""
T = TypeVar("T")


@dataclass(frozen=True)
class Hostile:
    """One record for llmq.requests and the error reply it is owed."""

    raw: bytes | None
    """The record's value; None is a tombstone."""
    correlation_id: str | None
    """Who must get exactly one error reply; None when the record names nobody usable."""
    reply_to: str | None
    """Where that reply is published; None: the result store only."""
    blame: tuple[str, ...] = ()
    """The error message must contain one of these (the offending field); () when no field
    is to blame (bytes that are not JSON)."""

    def renamed(self, correlation_id: str) -> Hostile:
        """The same record under another correlation id (the same length keeps sizes)."""
        if self.raw is None or self.correlation_id != CID:
            return self
        raw = self.raw.replace(CID.encode(), correlation_id.encode())
        return replace(self, raw=raw, correlation_id=correlation_id)


HOSTILE_TEXT = [
    "",
    "\x00",
    "nul\x00in the middle",
    "\x01\x02\x1b[31m\x7f",
    "\u202eevil\u202c",
    "\ufeffbom",
    "\ud800",
    "\udfff lone low surrogate",
    "x" * 200_000,
    "\U0001f4a5" * 1000,
    "line\nbreak\r\n\t",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "%s%n%x",
    "{{7*7}}${jndi:ldap://x}",
]
"""Strings that have broken parsers, logs, terminals or templates somewhere."""

hostile_text = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Values that are wrong for the field they replace: wrong types, out of range, empty, huge.
_IDS: list[Any] = [
    None,
    "",
    "has space",
    "x" * 129,
    42,
    [],
    {},
    "\u202eevil",
    "nul\x00",
    "\ud800",
    "ré",
]
_FLOAT_JUNK: list[Any] = [None, "x", [], {}, math.nan, math.inf, -math.inf]
_PENALTY = [2.5, -2.5, *_FLOAT_JUNK]
INVALID: dict[str, list[Any]] = {
    "correlation_id": _IDS,
    "tenant": _IDS,
    "model": ["", "-x", "m" * 65, 42, [], "no-such-model"],
    "lane": ["urgent", "", None, 0, []],
    "deadline": [0, -1, 1.0, "soon", [], math.nan, math.inf],
    "cache": ["sometimes", None, 1, ""],
    "created_at": [-1, 0, "now", None, 10**400, math.nan, math.inf],
    "schema_version": [2, 0, None, "one"],
    "body": [None, [], "", 0, {}],
    "body.messages": [[], None, "hi", [None], [{}], [{"role": "user"}], [{"x": 1}] * 257],
    "body.messages.0.role": ["function", "", None, 1, "USER"],
    "body.messages.0.content": [None, 1, [], {"text": "x"}, "x" * 200_001, "x" * 20_000],
    "body.max_tokens": [0, -1, 32_769, 4096, "many", None, 1.5, 10**30, math.nan],
    "body.temperature": [-0.1, 2.01, *_FLOAT_JUNK],
    "body.top_p": [0, 1.01, *_FLOAT_JUNK],
    "body.stop": ["", [""], ["x" * 257], ["a"] * 5, 1, [1]],
    "body.seed": [-(2**63) - 1, 2**63, "s", 1.5, math.nan],
    "body.presence_penalty": _PENALTY,
    "body.frequency_penalty": _PENALTY,
    "body.top_k": [-2, 2**31, "k", 1.5, [], math.nan],
    "body.min_p": [-0.1, 1.01, "x", [], math.nan, math.inf],
    "body.repetition_penalty": [0, -1, 10.5, "x", [], math.nan, math.inf],
    "body.min_tokens": [-1, 32_769, "many", 1.5, math.nan],
    "body.logprobs": ["maybe", 2, [], None],
    "body.stream": ["perhaps", None, 2],
    "body.model": ["-x", "no-such-model", 42],
}
"""Every envelope and body field, with values that no request may carry there."""
NUMERIC = ["created_at", "deadline", "body.max_tokens", "body.temperature", "body.seed"]
ROUTE_WORDS = {"body.messages.0.content": "prompt"}
"""Fields whose values may be well-formed but not served; the error then says so in words."""
BAD_REPLY_TO = [
    "",
    "bad topic",
    "a/b",
    "x" * 250,
    ".",
    "..",
    "__consumer_offsets",
    "_schemas",
    "llmq.requests",
    "llmq.requests.keyed",
    "llmq.dlq",
    "llmq.work.smollm2-135m.batch",
    "llmq-streams-llmq.inflight-changelog",
    "llmq.results\n",
    42,
    None,
    ["x"],
    "\ud800",
]
"""Reply topics that admission must not publish to: illegal in Kafka, or Kafka's, faust's or
llmq's own topics (an error reply there would be read as one of their records)."""


def envelope(reply_to: str) -> dict[str, Any]:
    """A valid request that no cache can answer (a fixed created_at keeps it comparable)."""
    return {
        "correlation_id": CID,
        "tenant": TENANT,
        "reply_to": reply_to,
        "cache": "off",
        "created_at": 1_700_000_000.0,
        "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
    }


def _get(data: dict[str, Any], path: str) -> Any:
    """The field at the dotted `path` ("" for `data` itself)."""
    node: Any = data
    for part in path.split(".") if path else []:
        node = node[int(part)] if part.isdigit() else node[part]
    return node


def _put(data: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A deep copy of `data` with the field at the dotted `path` set to `value`."""
    data = copy.deepcopy(data)
    parent, _, leaf = path.rpartition(".")
    _get(data, parent)[int(leaf) if leaf.isdigit() else leaf] = value
    return data


def _dumps(data: object) -> bytes:
    """JSON as any app might write it (lone surrogates escaped, NaN and Infinity literals)."""
    return json.dumps(data).encode()


def _blame(path: str) -> tuple[str, ...]:
    words = (path, path.rsplit(".", 1)[-1])
    return (*words, ROUTE_WORDS[path]) if path in ROUTE_WORDS else words


def with_field(reply_to: str, path: str, value: object) -> Hostile:
    """A valid envelope with the field at the dotted `path` set to `value`."""
    raw = _dumps(_put(envelope(reply_to), path, value))
    if path == "reply_to":
        return Hostile(raw, CID, RESULTS, ("reply_to",))
    return Hostile(raw, None if path == "correlation_id" else CID, reply_to, _blame(path))


def with_text(reply_to: str, path: str, text: str) -> Hostile:
    """A valid envelope with `text` spelled into its JSON as the value of the field at
    `path`: JSON that json.dumps does not write."""
    marker = "__SPLICED__"
    raw = _dumps(_put(envelope(reply_to), path, marker))
    return Hostile(raw.replace(f'"{marker}"'.encode(), text.encode()), CID, reply_to, _blame(path))


def with_key(reply_to: str, where: str, key: str) -> Hostile:
    """A valid envelope with an unknown field `key` in the object at `where`."""
    data = envelope(reply_to)
    parent = _get(data, where)
    if key in parent:
        key += "_extra"
    parent[key] = None
    return Hostile(_dumps(data), CID, reply_to, (ascii(key[:10])[1:-1],))


@st.composite
def wrong_field(draw: st.DrawFn, reply_to: str) -> Hostile:
    """One field replaced by a value it may not have."""
    path = draw(st.sampled_from(sorted(INVALID)))
    return with_field(reply_to, path, draw(st.sampled_from(INVALID[path])))


def wrong_reply_to(reply_to: str) -> st.SearchStrategy[Hostile]:
    """An otherwise valid request naming a reply topic nobody may be answered on."""
    return st.sampled_from(BAD_REPLY_TO).map(lambda topic: with_field(reply_to, "reply_to", topic))


@st.composite
def unknown_key(draw: st.DrawFn, reply_to: str) -> Hostile:
    """An unknown field at the top, in the body or in a message, under a hostile name."""
    where = draw(st.sampled_from(["", "body", "body.messages.0"]))
    return with_key(reply_to, where, draw(hostile_text))


@st.composite
def literal(draw: st.DrawFn, reply_to: str) -> Hostile:
    """A number no Python float or int holds in a numeric field: 5000 digits, NaN, Infinity."""
    path = draw(st.sampled_from(NUMERIC))
    text = draw(st.sampled_from(["1" + "0" * 5000, "-" + "9" * 5000, "NaN", "Infinity"]))
    return with_text(reply_to, path, text)


@st.composite
def nested(draw: st.DrawFn, reply_to: str) -> Hostile:
    """A field holding nested arrays: readable to a few hundred levels; beyond the parser's
    recursion limit the envelope's other fields are still read, at the top."""
    path = draw(st.sampled_from(["body", "body.messages.0.content", "tenant", "body.stop"]))
    depth = draw(st.sampled_from([2, 50, 300, 100_000]))
    hostile = with_text(reply_to, path, _nested(depth))
    return hostile if depth <= 300 else replace(hostile, blame=("nested too deeply",))


@st.composite
def duplicate_key(draw: st.DrawFn, reply_to: str) -> Hostile:
    """A field given twice, a valid value first and a wrong one last: the last one counts."""
    path = draw(st.sampled_from(["correlation_id", "tenant", "body", "lane"]))
    wrong = draw(st.sampled_from(INVALID[path]))
    owed = with_field(reply_to, path, wrong)  # as if the wrong value were the only one
    raw = _dumps(envelope(reply_to))[:-1] + b", " + _dumps({path: wrong})[1:]
    return replace(owed, raw=raw)


@st.composite
def bad_bytes(draw: st.DrawFn, reply_to: str) -> Hostile:
    """Bytes that are not UTF-8 inside the prompt of an otherwise valid request, perhaps
    after a UTF-8 BOM (which is allowed): nothing to parse, but still someone to answer."""
    junk = draw(
        st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
    )
    bom = draw(st.sampled_from([b"", b"\xef\xbb\xbf"]))
    raw = bom + _dumps(envelope(reply_to)).replace(b'"Hi"', b'"H' + junk + b'i"')
    return Hostile(raw, CID, reply_to)


@st.composite
def truncated(draw: st.DrawFn, reply_to: str) -> Hostile:
    """A valid request cut short: not JSON, so nobody can be answered."""
    raw = _dumps(envelope(reply_to))
    return Hostile(raw[: draw(st.integers(0, len(raw) - 1))], None, None)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
"""Any JSON value, NaN and infinities included."""


@st.composite
def not_a_request(draw: st.DrawFn) -> Hostile:
    """Arbitrary bytes, a tombstone, or JSON of any type (an object without a correlation id)."""
    raw = draw(
        st.one_of(
            st.binary(max_size=200),
            st.just(None),
            json_values.filter(lambda v: not isinstance(v, dict) or "correlation_id" not in v).map(
                _dumps
            ),
        )
    )
    return Hostile(raw, None, None)


def hostile_records(reply_to: str) -> st.SearchStrategy[Hostile]:
    """Every kind of record that admission must refuse, each with what it is owed."""
    return st.one_of(
        not_a_request(),
        wrong_field(reply_to),
        wrong_reply_to(reply_to),
        unknown_key(reply_to),
        literal(reply_to),
        nested(reply_to),
        duplicate_key(reply_to),
        bad_bytes(reply_to),
        truncated(reply_to),
    )


def padded(hostile: Hostile, size: int) -> Hostile:
    """The record followed by whitespace (still the same JSON), `size` bytes in all."""
    assert hostile.raw is not None and len(hostile.raw) <= size
    return replace(hostile, raw=hostile.raw + b" " * (size - len(hostile.raw)))


def at_the_size_limit(reply_to: str) -> list[tuple[Hostile, bool]]:
    """Records of exactly MAX_RECORD_BYTES and one byte more, valid and not: (record, whether
    admission must admit it)."""
    valid = Hostile(_dumps(envelope(reply_to)), CID, reply_to)
    invalid = with_field(reply_to, "body.max_tokens", 0)
    over = ("bytes",)
    return [
        (padded(valid, MAX_RECORD_BYTES), True),
        (replace(padded(valid, MAX_RECORD_BYTES + 1), blame=over), False),
        (padded(invalid, MAX_RECORD_BYTES), False),
        (replace(padded(invalid, MAX_RECORD_BYTES + 1), blame=over), False),
    ]


def _unicode(text: str) -> bool:
    """No lone surrogates: what every string of a request must be."""
    return not any("\ud800" <= c <= "\udfff" for c in text)


valid_content = st.one_of(
    st.sampled_from([t for t in HOSTILE_TEXT if t and len(t) < 10_000 and _unicode(t)]),
    st.text(min_size=1, max_size=200),
)


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """Well-formed requests the built-in catalog serves, hostile but legal prompts included."""
    identifier = st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z")
    messages = st.lists(
        st.fixed_dictionaries(
            {"role": st.sampled_from(["system", "user", "assistant"]), "content": valid_content}
        ),
        min_size=1,
        max_size=4,
    )
    body = st.fixed_dictionaries(
        {"messages": messages, "max_tokens": st.integers(1, 64)},
        optional={
            "temperature": st.floats(0.0, 2.0),
            "top_p": st.floats(0.01, 1.0),
            "stop": st.lists(st.text(min_size=1, max_size=8).filter(str.isprintable), max_size=4),
            "seed": st.integers(-(2**63), 2**63 - 1),
            "presence_penalty": st.floats(-2.0, 2.0),
            "top_k": st.integers(-1, 2**31 - 1),
            "min_p": st.floats(0.0, 1.0),
            "repetition_penalty": st.floats(0.0, 10.0, exclude_min=True),
            "min_tokens": st.integers(0, 1),
            "logprobs": st.booleans(),
            "stream": st.just(False),
        },
    )
    envelope = st.fixed_dictionaries(
        {"correlation_id": identifier, "created_at": st.floats(1.0, 4e9), "body": body},
        optional={
            "tenant": identifier,
            "model": st.sampled_from(["smollm2-135m", "auto"]),
            "lane": st.sampled_from(["interactive", "standard", "batch"]),
            "reply_to": st.sampled_from(["llmq.results", "app.replies", "a", "A-b_c.9"]),
            "deadline": st.floats(4e9, 1e12),
            "cache": st.sampled_from(["auto", "always", "off"]),
            "schema_version": st.just(1),
        },
    )
    return draw(envelope)


def examples(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """Up to `count` examples of `strategy`, the same ones on every run."""
    found: list[T] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: T) -> None:
        found.append(example)

    collect()
    return found
