"""OpenAI's Responses API (`/v1/responses`) on the chat machinery: the input (a string, or
messages of text and function calls and their outputs) after the conversation it continues
(`previous_response_id`) and the instructions become a chat request, with its function
tools, and its answer goes back as a `response` object whose output is one assistant
message, or the function calls it makes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.openai import (
    IGNORED,
    Call,
    begun_within,
    check_verbosity,
    completion_of,
    given_fields,
    logprob_count,
    param_name,
    read_call,
)
from gateway.openai import ROLES as CHAT_ROLES
from gateway.response_items import REFERENCE
from gateway.response_store import RESPONSE_ID, Kept
from gateway.response_tools import (
    assistant_of,
    call_item_id,
    call_items,
    chat_tools,
    echoed_tools,
    tool_message,
)
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.redact import describe, field_name
from schemas.request import MAX_MESSAGES
from schemas.result import InferenceResult, Usage

SAMPLING = ("temperature", "top_p")
"""Fields with the same name and meaning in both APIs."""
EXTENSIONS = frozenset({"ignore_eos", "top_k", "min_p", "repetition_penalty", "min_tokens"})
"""vLLM's sampling extensions, taken as on chat completions (the SDK's extra_body)."""
READ = frozenset(
    {"model", "input", "instructions", "max_output_tokens", "top_logprobs", "text", "stream"}
    | {"previous_response_id", "tools", "tool_choice", "parallel_tool_calls"}
    | set(SAMPLING)
    | EXTENSIONS
    | {"service_tier", "lane", "cache"}
    | set(IGNORED)
)
"""The body fields llmq reads: OpenAI's for a text response, vLLM's and llmq's own."""
OWN = frozenset(
    {"input", "instructions", "max_output_tokens", "top_logprobs", "text", "previous_response_id"}
    | {"tools", "tool_choice", "parallel_tool_calls"}
)
"""READ fields this module turns into chat fields itself."""
LOGPROBS = "message.output_text.logprobs"
"""The `include` that asks for the output text's log-probabilities."""
SERVED_ONLY = {
    "truncation": ("disabled",),
    "include": ([], [LOGPROBS]),
    "background": (False,),
    "stream_options": ({}, *({"include_obfuscation": b} for b in (False, True))),
}
"""Fields accepted at these values only: no truncation, the logprobs as the one thing
included, answered now, streamed events with or without `include_obfuscation` (llmq pads
none)."""
NAMES = {"max_tokens": "max_output_tokens", "response_format": "text.format"}
"""Chat's fields this body names otherwise, as ChatBody's refusals name them in words."""
ROLES = frozenset(CHAT_ROLES) - {"tool"}
TOOL_ITEMS = frozenset({"function_call", "function_call_output"})
TEXT_PARTS = frozenset({"input_text", "output_text"})


@dataclass(frozen=True)
class Echo:
    """What a `response` object says of the call it answers: its id, what its body asked,
    and whether it is stored."""

    correlation_id: str
    asked: dict[str, Any]
    store: bool

    @property
    def item_id(self) -> str:
        """The id of the answer's message, an output item."""
        return f"msg_{self.correlation_id}"

    def call_item_id(self, number: int) -> str:
        """The id of the output item of the answer's `number`th call (from 0)."""
        return call_item_id(self.correlation_id, number)


@dataclass(frozen=True)
class ResponseCall(Call):
    """A call read from a Responses body: what its `response` object echoes back."""

    asked: dict[str, Any] = field(default_factory=dict)
    """instructions, metadata, sampling, the text format and the response continued, as the
    body gave them."""
    conversation: list[dict[str, Any]] = field(default_factory=list)
    """The messages the answer follows, but the instructions: those of the response
    continued, then the input. Stored with the answer, they are what a response that
    continues this one follows."""
    store: bool = True
    """Whether the response is stored, to be fetched and continued from."""
    chain: tuple[str, ...] = ()
    """The stored responses whose turns hold the conversation continued, oldest first (none:
    no conversation continued, or one stored whole, kept whole again as this one's turn)."""
    start: int = 0
    """Where this call's turn begins in `conversation`: after the conversation continued, or
    at its last message, the answer its input's calls joined."""

    @property
    def echo(self) -> Echo:
        return Echo(self.request.correlation_id, self.asked, self.store)

    def kept(self, response: dict[str, Any]) -> Kept:
        """What storing this call's `response` keeps: it, and its conversation with the
        answer (its text, or its calls) added, its own turn after those it continues."""
        messages = [*self.conversation, assistant_of(response["output"])]
        return Kept(response, messages, (*self.chain, response["id"]), self.start)


def read_response_call(
    data: object,
    *,
    tenant: str,
    lane: str | None,
    default_lane: str = Lane.INTERACTIVE.value,
    catalog: Catalog,
    timeout_s: float,
    history: Sequence[dict[str, Any]] | None = None,
    chain: Sequence[str] = (),
) -> ResponseCall:
    """The request a Responses body asks for, following the `history` of the response it
    continues (None: where none is looked up, a batch line), held by the turns of the
    `chain` of responses (Kept.turns); LlmqError (400, 404) saying what is wrong. A null
    field is one not given."""
    data = given_fields(data)
    _check_fields(data)
    _check_strict(data)
    if history is None:
        _check_alone(data)
        history = []
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        why = "instructions must be a string"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="instructions")
    system = [] if not instructions else [{"role": "system", "content": instructions}]
    conversation, items = _messages(data.get("input"), history)
    _check_length(len(history), len(items), len(system))
    fields: dict[str, Any] = {
        **{k: v for k, v in data.items() if k in READ and k not in OWN},
        **chat_tools(data),
        "messages": system + conversation,
    }
    if "max_output_tokens" in data:
        fields["max_tokens"] = data["max_output_tokens"]
    top = logprob_count(data.get("top_logprobs", 0), "top_logprobs")
    if LOGPROBS in data.get("include", []):
        fields.update(logprobs=True, top_logprobs=top)
    fmt = _format(data.get("text", {}))
    as_json = _response_format(fmt)
    if as_json is not None:
        fields["response_format"] = as_json
    try:
        call = read_call(
            fields,
            tenant=tenant,
            lane=lane,
            default_lane=default_lane,
            catalog=catalog,
            timeout_s=timeout_s,
            names=NAMES,
        )
    except LlmqError as exc:
        raise _renamed(exc, _Names(len(system), len(history), items)) from None
    named = ("instructions", "top_logprobs", "previous_response_id")
    asked = {k: data.get(k) for k in named}
    asked["max_output_tokens"] = call.request.body.max_tokens  # the one used: 256 if not given
    asked.update(metadata=data.get("metadata", {}), text={"format": fmt}, **echoed_tools(data))
    asked.update((k, getattr(call.request.body, k)) for k in SAMPLING)
    store = data.get("store", True)
    start = _turn_start(history, conversation) if chain else 0
    return ResponseCall(
        call.request,
        call.include_usage,
        call.n,
        asked,
        conversation,
        store,
        chain=tuple(chain),
        start=start,
    )


def _turn_start(history: Sequence[dict[str, Any]], conversation: list[dict[str, Any]]) -> int:
    """Where the messages a call adds to the `history` it continues begin in its
    `conversation`: after the history, or at its last message where the input's calls
    joined it (no other message of the history is changed)."""
    joined = history and conversation[len(history) - 1] != history[-1]
    return len(history) - 1 if joined else len(history)


@dataclass(frozen=True)
class _Names:
    """Where the chat request's messages came from: `system` instructions, then the `history`
    continued, then the input (`items`: the input item each of those came from)."""

    system: int
    history: int
    items: list[int]

    def of(self, loc: tuple[str | int, ...]) -> tuple[str, tuple[str | int, ...]]:
        """A chat body's field (a validation error's location) as this body names it: its
        head, and the path below it. Never raises: a location it does not know is chat's."""
        head, rest = (str(loc[0]), loc[1:]) if loc else ("", ())
        if head == "messages" and rest and isinstance(rest[0], int):
            index = rest[0] - self.system
            if index < 0:
                return "instructions", ()
            if index < self.history:
                return "previous_response_id", ()
            return "input", (*self.items[index - self.history :][:1], *rest[1:])
        if head == "messages":
            return "input", rest
        if head == "response_format":
            return "text.format", rest[1:] if rest[:1] == ("json_schema",) else rest
        if head in ("tools", "tool_choice") and "function" in rest:
            at = rest.index("function")  # a function tool's fields are the tool's own
            return head, rest[:at] + rest[at + 1 :]
        return NAMES.get(head, head), rest


def _renamed(exc: LlmqError, names: _Names) -> LlmqError:
    """The chat reader's refusal with its fields named as this body names them, read from
    where validation failed (read_call raises its error `from None` the ValidationError,
    which stays its context), never from the message, which quotes the body's values (the
    body's own checks name chat's fields in words as NAMES has them). Its other refusals
    name fields that this body names alike (model, service_tier, metadata, ...) and pass as
    they are."""
    invalid = exc.__context__ if exc.__suppress_context__ else None
    if not isinstance(invalid, ValidationError):
        return exc
    errors = invalid.errors(include_url=False, include_input=False, include_context=False)
    loc = errors[0]["loc"] if errors else ()
    head, rest = names.of(loc)
    param = param_name((head, *rest)) if loc else None
    return LlmqError(exc.code, describe(invalid, where=_where(names)), param=param)


def _where(names: _Names) -> Callable[[tuple[str | int, ...]], str]:
    """How `describe` names a location: dotted, as it does, an unknown key quoted."""

    def where(loc: tuple[str | int, ...]) -> str:
        head, rest = names.of(loc)
        if head == "previous_response_id":
            head = "previous_response_id (the conversation it continues)"
        return ".".join([head or "request", *map(field_name, rest)])

    return where


def _check_length(history: int, given: int, system: int) -> None:
    """A conversation continued (`history` messages) past what a request holds is refused
    naming previous_response_id (chat's cap would name `messages`, which this body has not)."""
    total = history + given + system
    if not history or total <= MAX_MESSAGES:
        return
    instructions = " and the instructions" if system else ""
    why = (
        f"previous_response_id continues a conversation of {history} messages: with the "
        f"input's {given}{instructions}, {total}, more than the {MAX_MESSAGES} messages a "
        "request holds; start a new conversation (without previous_response_id)"
    )
    raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="previous_response_id")


def _check_alone(data: dict[str, Any]) -> None:
    """A batch line stands alone: no stored response is looked up for it, to continue or to
    take items from."""
    given = data.get("input")
    items = given if isinstance(given, list) else []
    if "previous_response_id" in data:
        why = "previous_response_id is not served in a batch: each line stands alone"
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param="previous_response_id")
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == REFERENCE:
            why = (
                f"input items of type {REFERENCE!r} are not served in a batch: each line "
                "stands alone and cannot reference stored items; send the items themselves"
            )
            raise LlmqError(ErrorCode.UNSUPPORTED, why, param=f"input[{index}].type")


def _check_fields(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - READ - set(SERVED_ONLY))
    if unknown:
        raise LlmqError(
            ErrorCode.UNSUPPORTED,
            "llmq serves text and function-call responses (no reasoning, no conversation "
            "objects); "
            f"unsupported field(s): {', '.join(unknown)}",
            param=unknown[0],
        )
    for name, served in SERVED_ONLY.items():
        if name in data and data[name] not in served:
            why = (
                f"{name} {data[name]!r} is not served: llmq takes {' or '.join(map(repr, served))}"
            )
            raise LlmqError(ErrorCode.UNSUPPORTED, why, param=name)


def _check_strict(data: dict[str, Any]) -> None:
    """`stream` a boolean and `max_output_tokens` an integer of at least 1, as OpenAI takes
    them: chat's reader took "true" or 1 for true, and true or "5" for a number, which the
    response echoed as given."""
    if not isinstance(data.get("stream", False), bool):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "stream must be a boolean", param="stream")
    most = data.get("max_output_tokens", 1)
    if isinstance(most, bool) or not isinstance(most, int) or most < 1:
        why = "max_output_tokens must be an integer of at least 1"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="max_output_tokens")


def _messages(
    given: object, history: Sequence[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[int]]:
    """The conversation: the `history` continued, then the input as chat messages; and the
    input item each of those came from. A string is the user's; a list holds messages (with
    or without `"type": "message"`) whose content is a string or parts of text, function
    calls (joining the assistant message before them, the history's last too: as if the
    conversation were sent whole) and their outputs."""
    messages = [dict(message) for message in history]  # a call may join the last one
    if isinstance(given, str):
        return [*messages, {"role": "user", "content": given}], [0]
    if not isinstance(given, list) or not given:
        why = "input must be a string or a list of messages"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="input")
    items: list[int] = []
    for index, item in enumerate(given):
        if not isinstance(item, dict):
            why = "each input item must be an object"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}]")
        made = _message_of(index, item, messages)
        if made is not None:
            where = f"input[{index}].{'output' if made['role'] == 'tool' else 'content'}"
            messages.append({**made, "content": _content(made["content"], where)})
            items.append(index)
    return messages, items


def _message_of(
    index: int, item: dict[str, Any], messages: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """An input item (the `index`th) as a chat message (its content as given); None for a
    function call that joins the assistant message before it (`messages`' last)."""
    kind = item.get("type", "message")
    if not isinstance(kind, str):  # a list is unhashable: a 500 below
        why = "an input item's type must be a string"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"input[{index}].type")
    if kind in TOOL_ITEMS:
        return tool_message(index, item, messages)
    if kind != "message":
        why = f"input items of type {kind!r} are not served"
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param=f"input[{index}].type")
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        why = f"input role {role!r} is not served; use {', '.join(sorted(ROLES))}"
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param=f"input[{index}].role")
    return {"role": role, "content": item.get("content")}


def _content(content: object, where: str) -> object:
    """A message's (or a function call output's) content, the body's field `where`: a
    string, or its parts of text joined by line breaks (as vLLM joins them)."""
    if not isinstance(content, list):
        return content  # a string, or validation names the problem
    texts = []
    for at, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in TEXT_PARTS:
            why = f"content parts of type {kind!r} are not served; send input_text"
            raise LlmqError(ErrorCode.UNSUPPORTED, why, param=f"{where}[{at}].type")
        text = part.get("text")
        if not isinstance(text, str):  # reached the model as "None" or "7"
            why = "a text part's text must be a string"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"{where}[{at}].text")
        texts.append(text)
    return "\n".join(texts)


def _format(text: object) -> dict[str, Any]:
    """The body's `text.format`, checked (plain text when not given), and its verbosity."""
    if not isinstance(text, dict) or not set(text) <= {"format", "verbosity"}:
        why = "text holds format (and verbosity) only"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="text")
    check_verbosity(text.get("verbosity"), "text.verbosity")
    fmt = text.get("format", {"type": "text"})
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        why = "text.format.type must be text, json_object or json_schema"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="text.format.type")
    return fmt


def _response_format(fmt: dict[str, Any]) -> dict[str, Any] | None:
    """A `text.format` as chat's response_format (None for plain text)."""
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


def response_of(echo: Echo, results: list[InferenceResult]) -> dict[str, Any]:
    """The `response` of a call's answer: one assistant message of text, or the function
    calls it makes (after the message of the text before them, if any), the usage in this
    API's names, what the call's body asked echoed, and llmq's extras under `llmq`."""
    body = completion_of(results)
    [choice] = body["choices"]
    status = status_of(choice["finish_reason"])
    calls = choice["message"].get("tool_calls") or []
    text = choice["message"].get("content") or ""  # with calls, the text before them
    logprobs = (choice.get("logprobs") or {}).get("content") or []  # the text's alone
    output = [] if calls and not text else [message_item(echo, status, [text_part(text, logprobs)])]
    output += call_items(calls, status, echo.correlation_id)
    usage = _usage(body.get("usage"))
    answer = response_body(
        echo,
        created=body["created"],
        model=body["model"],
        status=status,
        output=output,
        usage=usage,
    )
    return {**answer, "llmq": body["llmq"]}


def status_of(finish_reason: str | None) -> str:
    """A finished answer's status: cut at max_output_tokens, or whole."""
    return "incomplete" if finish_reason == "length" else "completed"


def spelling(logprobs: list[dict[str, Any]], length: int) -> list[dict[str, Any]]:
    """The log-probabilities of the text before an answer's calls: of the tokens that
    begin within its `length` characters."""
    return logprobs[: begun_within((entry["token"] for entry in logprobs), length)]


def text_part(text: str, logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer's text as its message's one content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs}


def message_item(echo: Echo, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer's message, an output item."""
    return {
        "type": "message",
        "id": echo.item_id,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def response_body(
    echo: Echo,
    *,
    created: int,
    model: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
    error: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The `response` object: its output so far and what the body asked, echoed (and, for a
    failed one, its `error`)."""
    cut = status == "incomplete"
    return {
        "id": f"{RESPONSE_ID}{echo.correlation_id}",
        "object": "response",
        "created_at": created,
        "status": status,
        "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
        "error": error,
        "model": model,
        "output": output,
        **echoed_tools({}),  # echo.asked holds the body's; a batch line's from before tools not
        **echo.asked,
        "store": echo.store,
        "truncation": "disabled",
        "usage": usage,
    }


def used(usage: Usage | None) -> dict[str, Any] | None:
    """An answer's usage (llmq's) in this API's names."""
    return None if usage is None else _usage(usage.model_dump(exclude_none=True))


def _usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat's usage in this API's names (llmq counts no reasoning tokens, nor the prompt
    tokens written to the engine's prefix cache)."""
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }
