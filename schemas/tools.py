"""Tool calls, OpenAI's function calling: the functions a request offers, the calls an answer
makes, the JSON schema that holds the engine's output to them, and that output read back as
calls. The engine writes a tool call as JSON text, held to the schema token by token, so a
call always parses (unless max_tokens cuts it). Under "auto" the model writes text or calls
in its own syntax, each call held to its function's schema once begun; Hermes's
(`<tool_call>{"name": ..., "arguments": ...}</tool_call>`, Qwen's too) is the one read."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal, Self

from pydantic import ConfigDict, Field, JsonValue, model_validator

from schemas.contract import Contract

MAX_TOOLS = 128
"""OpenAI's bound on the functions one request offers."""
MAX_PARAMETERS_CHARS = 32_768
"""The largest parameters schema of one function, as compact JSON (as a response_format's)."""
FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
"""OpenAI's function names."""
MAX_ARGUMENTS_CHARS = 200_000
"""The longest arguments of one call, as JSON text."""
MAX_CALL_ID_CHARS = 128
"""The longest id of a call."""
_HERMES_BEGIN = "<tool_call>"
_HERMES_END = "</tool_call>"
_HERMES_TRIGGER = "<tool_call"
"""Where the grammar holds a call from: not its ">", which some tokenizers fold into one
special token with the rest."""
_SPACE = " \t\n"
"""The space the grammar lets between and after calls."""
_MAX_SPACE = 8
"""The most of it, so that a model that writes on after a call must end (or call)."""
_JSON = json.JSONDecoder()


class Function(Contract):
    """A function a request offers: its name, what it does, the JSON schema of its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(default=None, max_length=4_096)
    parameters: dict[str, JsonValue] | None = None
    """A JSON schema of an object; none: the function takes no arguments."""
    strict: bool | None = None
    """Accepted as OpenAI's SDKs send it: llmq always holds the arguments to the schema."""

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        chars = len(json.dumps(self.parameters or {}, separators=(",", ":")))
        if chars > MAX_PARAMETERS_CHARS:
            raise ValueError(
                f"function {self.name!r}: its parameters schema is {chars} characters; "
                f"at most {MAX_PARAMETERS_CHARS}"
            )
        return self

    @property
    def schema_(self) -> dict[str, JsonValue]:
        """The schema its arguments are held to."""
        return self.parameters or {"type": "object", "properties": {}}


class Tool(Contract):
    """One tool of a request: a function (the one kind of tool chat completions have)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"] = "function"
    function: Function


class NamedFunction(Contract):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(Contract):
    """`tool_choice` naming the one function the answer must call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
"""What the answer does with the tools: no call ("none"), text or calls as the model decides
("auto", for a model whose catalog entry names its `tool_call_parser`), one call or more of
any of them ("required"), or a call of the one named."""


class FunctionCall(Contract):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=FUNCTION_NAME)
    arguments: str = Field(max_length=MAX_ARGUMENTS_CHARS)
    """The arguments as JSON text, as OpenAI sends them."""


class ToolCall(Contract):
    """A call an answer makes (an assistant message's `tool_calls`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=MAX_CALL_ID_CHARS)
    type: Literal["function"] = "function"
    function: FunctionCall


def tool_dicts(tools: list[Tool] | None) -> list[dict[str, Any]] | None:
    """Tools as a chat template, a remote engine and the fingerprint take them."""
    return None if tools is None else [t.model_dump(exclude_none=True) for t in tools]


def calls_tools(choice: ToolChoice | None) -> bool:
    """Whether an answer under this choice may be tool calls (read once it is whole)."""
    return choice is not None and choice != "none"


def call_grammar(tools: list[Tool], parallel: bool | None) -> str:
    """The grammar that holds an answer under "auto", in llguidance's Lark (the engine's
    structured-output backend): text is free until it reaches `<tool_call`; from there it
    is calls, each held to an offered function's name and schema up to its end, with only
    a little whitespace between and after them (one call when `parallel` is False). (vLLM's
    structural tags would hold the calls, but its llguidance backend reads `<tool_call>`
    as a special token and lets any JSON through as the arguments.)"""
    names, rules = [], []
    for i, tool in enumerate(tools):
        schema = {"x-guidance": {"whitespace_flexible": False}, **tool.function.schema_}
        begin = json.dumps(f'{{"name": "{tool.function.name}", "arguments": ')
        names.append(f"call_{i}")
        rules.append(f'{names[-1]}: {begin} %json {json.dumps(schema)} "}}" GAP "</tool_call>"')
    return "\n".join(
        [
            "%llguidance {}",
            "start: TEXT | first" + ("" if parallel is False else " more*") + " SPACE",
            "TEXT: /(.|\\n)*/",
            f"SPACE: /[ \\t\\n]{{0,{_MAX_SPACE}}}/",
            "GAP: /\\n?/",
            "first: begun call",
            f'begun[lazy]: TEXT "{_HERMES_TRIGGER}"',
            f"more: /[ \\t\\n]{{0,{_MAX_SPACE}}}{_HERMES_TRIGGER}/ call",
            'call: ">" GAP (' + " | ".join(names) + ")",
            *rules,
        ]
    )


def output_schema(
    tools: list[Tool], choice: ToolChoice | None, parallel: bool | None
) -> dict[str, Any] | None:
    """The JSON schema the engine holds the answer to: the named function's arguments, or
    ("required") a list of calls, each a function's name and its arguments (one call only
    when `parallel` is False), as vLLM's server holds them but for keys beside those two,
    which vLLM's allows and a small model fills until max_tokens; None when the answer is
    text (or, under "auto", text or calls: `call_grammar`). A function's schema with local
    refs (`#/$defs/...`, `#`) is held in the list's `$defs` under its name, its refs rebased
    there: inline, they would point into the list. (Not at `#/items/anyOf/<i>/...`:
    xgrammar, a remote vLLM server's default backend, finds no field `0` in a list.)"""
    if not calls_tools(choice) or choice == "auto":
        return None
    if isinstance(choice, NamedToolChoice):
        return dict(_function(tools, choice.function.name).schema_)
    held, defs = [], {}
    for tool in tools:
        name, schema = tool.function.name, tool.function.schema_
        lifted = _rebased(schema, f"#/$defs/{name}")
        if lifted != schema:
            defs[name], lifted = lifted, {"$ref": f"#/$defs/{name}"}
        held.append((name, lifted))
    calls: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "anyOf": [
                {
                    "properties": {
                        "name": {"type": "string", "enum": [name]},
                        "parameters": parameters,
                    },
                    "required": ["name", "parameters"],
                    "additionalProperties": False,
                }
                for name, parameters in held
            ],
        },
    }
    calls["maxItems"] = 1 if parallel is False else MAX_TOOLS
    if defs:
        calls["$defs"] = defs
    return calls


def _rebased(schema: Any, base: str) -> Any:
    """`schema` moved to `base` (a pointer, "#/..."): its local refs ("#", "#/...") point
    at the same places under it, as they pointed into it at its own root. Other refs (a
    remote URI, an anchor) stay as they are."""
    if isinstance(schema, list):
        return [_rebased(item, base) for item in schema]
    if not isinstance(schema, dict):
        return schema
    moved = {key: _rebased(value, base) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        moved["$ref"] = base + ref[1:]
    return moved


def repeated_name(tools: list[Tool]) -> str | None:
    """The first function name offered twice, if any: a call names its function, so two of
    one name would leave it unsaid which (refused at admission, not in the schema, so that
    a record admitted before stays readable)."""
    names = [tool.function.name for tool in tools]
    return next((name for i, name in enumerate(names) if name in names[:i]), None)


def tool_calls(
    tools: list[Tool], choice: ToolChoice | None, text: str, context: str
) -> list[ToolCall] | None:
    """The calls an answer's `text` makes under `choice`; None when it makes none: text is
    asked for or chosen ("auto"), or the text is no calls (max_tokens cut it; a remote
    engine that did not hold it to the schema). Each call's id is the same for the same
    `context` (the conversation so far) and text: a cached or coalesced answer, or a stream
    and the stored result of the same answer, name their calls alike."""
    if not calls_tools(choice):
        return None
    try:
        if choice == "auto":
            pairs = _tagged(tools, text)
        else:
            made = json.loads(text)  # a named call's arguments too: JSON, or no call
            if isinstance(choice, NamedToolChoice):
                pairs = [(choice.function.name, text)]  # the arguments as the engine wrote them
            else:
                pairs = [(c["name"], _arguments(c["parameters"])) for c in made]
        calls = [
            ToolCall(id=_call_id(context, text, i), function=FunctionCall(name=n, arguments=a))
            for i, (n, a) in enumerate(pairs)
        ]
    except (ValueError, TypeError, KeyError):  # pydantic's ValidationError is a ValueError
        return None
    return calls if 0 < len(calls) <= MAX_TOOLS else None


def text_before(text: str) -> str | None:
    """The text an answer under "auto" writes before its calls, less the space before
    them; None where it writes none, or the text is not such calls (an answer of text, a
    call cut short, the JSON of "required")."""
    try:
        if not _written(text):
            return None
    except (ValueError, TypeError):
        return None
    return text[: text.find(_HERMES_BEGIN)].rstrip(_SPACE) or None


def shown(text: str, since: int = 0) -> int:
    """How much of an unfinished answer under "auto" is text for certain: what comes before
    a call, or before the end of the text where it may be beginning one (`<tool_c`), less
    the space before that, which a call would leave out (`text_before`). `since`: what was
    shown before, before which no call begins."""
    at = text.find(_HERMES_TRIGGER, since)
    if at == -1:
        tail = range(max(since, len(text) - len(_HERMES_TRIGGER) + 1), len(text))
        at = next((i for i in tail if _HERMES_TRIGGER.startswith(text[i:])), len(text))
    while at > since and text[at - 1] in _SPACE:
        at -= 1
    return at


def finish_reason(choice: ToolChoice | None, calls: list[ToolCall] | None, reason: str) -> str:
    """An answer's finish reason, as OpenAI gives it: "tool_calls" for calls of "required"
    or "auto" that ended by themselves (a named function's call ends in "stop")."""
    chose = choice in ("required", "auto")
    return "tool_calls" if calls and chose and reason == "stop" else reason


def _tagged(tools: list[Tool], text: str) -> list[tuple[str, str]]:
    """The calls of an answer under "auto" as (name, arguments); none when it is text. A
    call of no function offered makes the answer text (ValueError), as `_written`'s."""
    return [(_function(tools, c["name"]).name, _arguments(c["arguments"])) for c in _written(text)]


def _arguments(given: Any) -> str:
    """A call's arguments as the JSON text OpenAI sends."""
    return json.dumps(given, ensure_ascii=False)


def _written(text: str) -> list[Any]:
    """The calls an answer writes in Hermes's syntax, as the grammar writes them: none when
    it is text; from its first `<tool_call>`, calls with only space between and after
    them. A call begun and not ended (max_tokens cut it) makes the answer text
    (ValueError)."""
    at = text.find(_HERMES_BEGIN)
    made = []
    while at != -1:
        call, at = _JSON.raw_decode(text, _after_space(text, at + len(_HERMES_BEGIN)))
        end = _after_space(text, at)
        if not text.startswith(_HERMES_END, end):
            raise ValueError("a call begun and not ended")
        made.append(call)
        at = _after_space(text, end + len(_HERMES_END))
        if at < len(text) and not text.startswith(_HERMES_BEGIN, at):
            raise ValueError("text after the calls")
        at = -1 if at == len(text) else at
    return made


def _after_space(text: str, at: int) -> int:
    while at < len(text) and text[at] in _SPACE:
        at += 1
    return at


def _function(tools: list[Tool], name: str) -> Function:
    for tool in tools:
        if tool.function.name == name:
            return tool.function
    raise ValueError(f"tool_choice names {name!r}, which is not one of the tools")


def _call_id(context: str, text: str, index: int) -> str:
    digest = hashlib.sha256(f"{context}\0{text}\0{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"
