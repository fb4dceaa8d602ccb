"""OpenAI's chat-completions wire format, both ways: a request body into llmq's envelope, and
results, pieces and errors into what the OpenAI SDK reads."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar

from pydantic import ValidationError

from schemas.catalog import Catalog, ModelSpec, auto_refused
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.redact import describe, dotted
from schemas.request import (
    MAX_CHOICES,
    MAX_TOP_LOGPROBS,
    NAMES,
    CacheMode,
    ChatBody,
    ChoiceOf,
    InferenceRequest,
)
from schemas.result import InferenceResult, TokenLogprob, TopLogprob, Usage
from schemas.tools import FunctionCall, ToolCall, text_before

AUTO = "auto"
TOOL_FIELDS = frozenset({"tools", "tool_choice", "parallel_tool_calls"})
"""Chat's fields of tool calls."""
PASSED = frozenset(
    {
        "messages",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "ignore_eos",
        "top_k",
        "min_p",
        "repetition_penalty",
        "min_tokens",
        "stream",
        "response_format",
    }
    | TOOL_FIELDS
)
"""Body fields llmq serves as OpenAI defines them, and vLLM's sampling extensions as vLLM's
server does."""
MAX_N = MAX_CHOICES
"""The most choices one request may ask for (`n`); each is a request of its own."""
READ_HERE = frozenset(
    {"model", "max_completion_tokens", "n", "stream_options", "service_tier", "modalities"}
    | {"verbosity", "lane", "cache"}
)
"""Body fields the front door reads itself: `n` (up to MAX_N), `service_tier` picks a lane,
`modalities` must be text, `verbosity` OpenAI's default; `lane` and `cache` are llmq's own
(the SDK's extra_body)."""
IGNORED: dict[str, type] = {
    "user": str,
    "safety_identifier": str,
    "prompt_cache_key": str,
    "prompt_cache_retention": str,
    "prompt_cache_options": dict,
    "store": bool,
    "metadata": dict,
}
"""OpenAI fields accepted (of their type) and ignored: ids of the end user and of a prompt
family, how long OpenAI keeps a prompt's cache (vLLM's prefix cache keeps what its memory
holds), OpenAI's own storage of the completion (llmq keeps every result in its store)."""
CHAT_IGNORED: dict[str, type] = {"prediction": dict}
"""Chat's own such fields: a predicted output (a speed-up of OpenAI's; the answer is the
same without it)."""
VERBOSITY = "medium"
"""The one verbosity llmq serves, OpenAI's default: a model's answer is as long as it is."""
MAX_METADATA = 16
"""OpenAI's bounds on `metadata`: pairs, and characters of a key and of a value."""
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
OPENAI_CODES: dict[str, str] = {
    ErrorCode.PROMPT_TOO_LARGE: "context_length_exceeded",
    ErrorCode.UNKNOWN_MODEL: "model_not_found",
}
"""OpenAI's error codes, where apps branch on them, for llmq's of the same condition."""
TIER_LANES = {
    "auto": None,
    "default": None,
    "scale": None,
    "flex": Lane.BATCH,
    "priority": Lane.INTERACTIVE,
    "fast": Lane.INTERACTIVE,
}
"""OpenAI's service_tier as a lane: "flex" trades speed for price as the batch lane does,
"priority" and "fast" the other way; "auto", "default" and "scale" leave the lane to the
header or the front door's default. A lane named in the body or the header wins."""
ROLES = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}

STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.PROMPT_TOO_LARGE: 400,
    ErrorCode.ANSWER_TOO_LARGE: 400,
    ErrorCode.UNSUPPORTED: 400,
    ErrorCode.UNKNOWN_MODEL: 404,
    ErrorCode.EXPIRED: 408,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.BUDGET_EXCEEDED: 429,
    ErrorCode.BUDGET_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.ENGINE_ERROR: 502,
    ErrorCode.ENGINE_UNAVAILABLE: 503,
    ErrorCode.ENGINE_TIMEOUT: 504,
    ErrorCode.CANCELLED: 499,
    ErrorCode.CRASH_LOOP: 500,
    ErrorCode.UNKNOWN: 500,
}
"""HTTP status of each error a reply can carry: the ones the OpenAI SDK maps to its
exceptions."""
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
}


@dataclass(frozen=True)
class Call:
    """One HTTP chat-completion request, read: llmq's request and how to answer it."""

    request: InferenceRequest
    include_usage: bool
    """stream_options.include_usage: a last chunk with the usage and no choices."""
    n: int = 1
    """Choices asked for: each is a request of its own (`requests`)."""

    @property
    def text(self) -> bool:
        """A text completion (`/v1/completions`): a raw prompt, answered in that API's shape."""
        return bool(self.request.body.raw_prompt)

    @cached_property
    def requests(self) -> list[InferenceRequest]:
        """One request per choice: the first is `request`, each other has a correlation id
        of its own ("<id>-<i>") and, when seeded, seed + i (modulo 2^63), so that seeded
        choices differ as OpenAI's do. Greedy ones, seeded or not, are one answer n times
        (the copies coalesce onto one generation: vLLM reads no seed when greedy); unseeded
        sampled ones are sampled apart, the copies kept out of the cache (cache "always"
        would otherwise serve them the first's). With n > 1 each names its call (`choice_of`,
        under the first's id), so that the rate limits admit or refuse the choices together:
        each admitted alone, the last were refused while the tenant was near its limit, the
        others charged for a call that failed."""
        if self.n == 1:
            return [self.request]
        call = ChoiceOf(call_id=self.request.correlation_id, n=self.n)
        first = self.request.model_copy(update={"choice_of": call})
        copies = [first]
        for i in range(1, self.n):
            body = first.body
            if body.seed is not None and body.temperature != 0.0:
                body = body.model_copy(update={"seed": (body.seed + i) % 2**63})
            update: dict[str, object] = {
                "correlation_id": f"{first.correlation_id}-{i}",
                "body": body,
            }
            if not body.deterministic:
                update["cache"] = CacheMode.OFF
            copies.append(first.model_copy(update=update))
        return copies


def read_call(
    data: object,
    *,
    tenant: str,
    lane: str | None,
    default_lane: str = Lane.INTERACTIVE.value,
    catalog: Catalog,
    timeout_s: float,
    text: bool = False,
    names: Mapping[str, str] | None = None,
) -> Call:
    """The request an HTTP body asks for; LlmqError (400, 404) saying what is wrong. A field
    that is null is not given (OpenAI's optional fields are nullable; clients send nulls).
    Its lane: the body's `lane`, else `lane` (a header's), else its service_tier's, else
    the default. With `text`, its one message is a raw prompt (gateway.text). A refusal
    names a chat field by its name in `names`, where the caller gave it another."""
    data = given_fields(data)
    n = _check_fields(data)
    tier = _tier_lane(data)
    model = data.get("model") or catalog.default
    check_model(model, catalog)
    fields = {k: v for k, v in data.items() if k in PASSED}
    fields["messages"] = _messages(data.get("messages"))
    _tools(fields, catalog.starting(model, calls=True))
    if text:
        fields["raw_prompt"] = True
    names = dict(names or {})
    if "max_completion_tokens" in data:  # the newer name wins over both, as in vLLM's server
        fields["max_tokens"] = data["max_completion_tokens"]
        names["max_tokens"] = "max_completion_tokens"
    options = data.get("stream_options") or {}
    now = time.time()
    try:
        request = InferenceRequest(
            correlation_id=uuid.uuid4().hex,
            tenant=tenant,
            model=model,
            lane=Lane(data.get("lane") or lane or tier or default_lane),
            cache=CacheMode(data.get("cache") or CacheMode.AUTO),
            deadline=now + timeout_s,
            created_at=now,
            body=ChatBody.model_validate(fields, context={NAMES: names}),
        )
    except ValidationError as exc:
        raise _refused(exc, names) from None
    except ValueError as exc:  # a lane or cache mode that does not exist
        raise LlmqError(ErrorCode.INVALID_REQUEST, str(exc)) from None
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return Call(request, include_usage, n)


def _refused(exc: ValidationError, names: Mapping[str, str]) -> LlmqError:
    """The refusal of a body that failed validation, naming its fields as `names` has them
    (the field at fault as OpenAI's errors name one: "messages[0].content")."""

    def renamed(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
        return (names.get(str(loc[0]), loc[0]), *loc[1:]) if loc else loc

    message = describe(exc, where=lambda loc: dotted(renamed(loc)) or "request")
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    param = param_name(renamed(errors[0]["loc"])) if errors else None
    return LlmqError(ErrorCode.INVALID_REQUEST, message, param=param)


def given_fields(data: object) -> dict[str, Any]:
    """A body's fields, a null one left out (OpenAI's optional fields are nullable; clients
    send nulls); LlmqError unless the body is a JSON object."""
    if not isinstance(data, dict):
        raise LlmqError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
    return {k: v for k, v in data.items() if v is not None}


def logprob_count(count: object, name: str) -> int:
    """How many of the likeliest tokens to give at each position, as the field `name` asks."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_TOP_LOGPROBS:
        why = f"{name} must be an integer from 0 to {MAX_TOP_LOGPROBS}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=name)
    return count


def check_model(model: object, catalog: Catalog) -> None:
    """LlmqError (404) unless `model` is one the catalog serves by name."""
    if model not in catalog.requestable:
        why = f"the model {model!r} does not exist; llmq serves {catalog.requestable}"
        raise LlmqError(ErrorCode.UNKNOWN_MODEL, why, param="model")


def _check_fields(data: dict[str, Any]) -> int:
    """Every field is one llmq serves, reads or ignores, and those it reads or ignores hold
    what llmq can take; the number of choices asked for."""
    ignored = IGNORED | CHAT_IGNORED
    unknown = sorted(set(data) - PASSED - READ_HERE - set(ignored))
    if unknown:
        raise LlmqError(
            ErrorCode.UNSUPPORTED,
            f"llmq serves plain chat completions; unsupported field(s): {', '.join(unknown)}",
        )
    n = data.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_N:
        why = f"n must be an integer from 1 to {MAX_N}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="n")
    if data.get("modalities") not in (None, ["text"]):
        why = 'llmq answers in text only: modalities ["text"]'
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param="modalities")
    check_verbosity(data.get("verbosity"), "verbosity")
    for name, kind in ignored.items():
        if name in data and not isinstance(data[name], kind):
            why = f"{name} must be a {kind.__name__}"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=name)
    checked_metadata(data.get("metadata"))
    return n


def check_verbosity(verbosity: object, param: str) -> None:
    """LlmqError (unsupported) unless the verbosity asked for (at `param`) is VERBOSITY or
    none: a model of llmq's has no other."""
    if verbosity is not None and verbosity != VERBOSITY:
        why = f"{param} must be {VERBOSITY!r} (or null): llmq serves no other verbosity"
        raise LlmqError(ErrorCode.UNSUPPORTED, why, param=param)


def checked_metadata(metadata: object) -> dict[str, str] | None:
    """OpenAI's metadata (None: not given): up to MAX_METADATA pairs of strings, the keys up
    to MAX_METADATA_KEY characters, the values up to MAX_METADATA_VALUE; LlmqError (400,
    param metadata) otherwise."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        why = f"metadata must be an object of at most {MAX_METADATA} pairs"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="metadata")
    for key, value in metadata.items():
        fits = isinstance(key, str) and len(key) <= MAX_METADATA_KEY
        if not fits or not isinstance(value, str) or len(value) > MAX_METADATA_VALUE:
            why = (
                f"metadata keys are strings to {MAX_METADATA_KEY} characters, values to "
                f"{MAX_METADATA_VALUE}"
            )
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="metadata")
    return metadata


def _tools(fields: dict[str, Any], serving: list[ModelSpec]) -> None:
    """The body's tools and tool choice as llmq serves them: no tools (or an empty list) is
    none, and leaves nothing to choose nor to call in parallel; with tools, "auto" (OpenAI's
    default) is refused unless every model it may start on (`serving`: model "auto" routes
    among those that read calls, and a fallback that reads none is left out of its route)
    reads its calls."""
    if fields.get("tools") == []:
        fields.pop("tools")
    if "tools" not in fields:
        if not isinstance(fields.pop("parallel_tool_calls", False), bool):
            why = "parallel_tool_calls must be a bool"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="parallel_tool_calls")
        if fields.get("tool_choice") in ("none", "auto"):
            fields.pop("tool_choice")
        return
    unread = [spec.name for spec in serving if spec.tool_call_parser is None]
    if fields.setdefault("tool_choice", "auto") == "auto" and unread:
        raise auto_refused(unread[0])


def _tier_lane(data: dict[str, Any]) -> Lane | None:
    """The lane a service_tier asks for, if any."""
    tier = data.get("service_tier") or "auto"
    if not isinstance(tier, str) or tier not in TIER_LANES:
        why = f"service_tier must be one of {sorted(TIER_LANES)}"
        raise LlmqError(ErrorCode.INVALID_REQUEST, why, param="service_tier")
    return TIER_LANES[tier]


def _messages(messages: object) -> object:
    """OpenAI's messages as llmq's: content parts of text joined by line breaks (as vLLM
    joins them), `developer` as system, tool calls as OpenAI defines them (the SDK's helpers
    add keys of their own to the messages they hand back)."""
    if not isinstance(messages, list):
        return messages  # validation names the problem
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return messages
        content = message.get("content")
        if isinstance(content, list):
            content = _joined(content, f"messages[{i}].content")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:  # a list or a dict: unhashable
            raise LlmqError(
                ErrorCode.UNSUPPORTED,
                f"message role {role!r} is not served; use system, user, assistant or tool",
                param=f"messages[{i}].role",
            )
        calls = {k: message[k] for k in ("tool_calls", "tool_call_id") if k in message}
        if isinstance(calls.get("tool_calls"), list):
            calls["tool_calls"] = [_call(call) for call in calls["tool_calls"]]
        out.append({"role": ROLES[role], "content": content, **calls})
    return out


def _joined(parts: list[object], param: str) -> str:
    """Text content parts as one text, by line breaks; a part of another type, or whose text
    is no string (read as "None" or "7" before), is refused."""
    if not all(isinstance(p, dict) and p.get("type") == "text" for p in parts):
        raise LlmqError(ErrorCode.UNSUPPORTED, "llmq serves text content parts only", param=param)
    texts = [p.get("text") for p in parts if isinstance(p, dict)]
    for j, text in enumerate(texts):
        if not isinstance(text, str):
            why = "a text content part's text must be a string"
            raise LlmqError(ErrorCode.INVALID_REQUEST, why, param=f"{param}[{j}].text")
    return "\n".join(t for t in texts if isinstance(t, str))


def _call(call: object) -> object:
    """A tool call of an assistant message, without what OpenAI's call does not hold (the
    SDK's `index` and `parsed_arguments`): as vLLM's server, llmq reads past them."""
    if not isinstance(call, dict):
        return call  # validation names the problem
    kept = {k: v for k, v in call.items() if k in ToolCall.model_fields}
    function = kept.get("function")
    if isinstance(function, dict):
        kept["function"] = {k: v for k, v in function.items() if k in FunctionCall.model_fields}
    return kept


def completion(result: InferenceResult) -> dict[str, Any]:
    """The `chat.completion` of an answer, with llmq's extras under `llmq` (the SDK keeps
    unknown fields: `completion.llmq`)."""
    if result.response is None:
        raise ValueError("an error result has no chat.completion")
    body = result.response.model_dump(
        exclude_none=True, exclude={"choices": {"__all__": {"logprobs"}}}
    )
    for choice, out in zip(result.response.choices, body["choices"], strict=True):
        content = None if choice.logprobs is None else choice.logprobs.content
        if choice.message.tool_calls:  # the calls, and the text "auto" wrote before them
            out["message"]["content"] = before = text_before(choice.message.content)
            if content is not None:  # the text's tokens alone, as OpenAI's are
                content = content[: begun_within((t.token for t in content), len(before or ""))]
        if content is not None:
            out["logprobs"] = logprobs_body(content)
    body["id"] = f"chatcmpl-{result.correlation_id}"
    body["llmq"] = {
        "correlation_id": result.correlation_id,
        "cache": result.cache.value,
        "model_used": result.model_used,
        "route": None if result.route is None else result.route.model_dump(),
        "timings": result.timings.model_dump(),
    }
    return body


def begun_within(tokens: Iterable[str], length: int) -> int:
    """How many of the tokens begin within the first `length` characters of their text:
    those of the text before an answer's calls."""
    count, start = 0, 0
    for token in tokens:
        if start >= length:
            break
        count, start = count + 1, start + len(token)
    return count


def logprobs_body(content: list[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's `logprobs` of a choice: each token, and each likely one, with the UTF-8 of
    its text as `bytes`, as vLLM's server gives them (a token that is part of a character
    has the replacement character's)."""
    return {
        "content": [
            {**_entry(token), "top_logprobs": [_entry(top) for top in token.top_logprobs]}
            for token in content
        ]
    }


def _entry(token: TokenLogprob | TopLogprob) -> dict[str, Any]:
    text = token.token
    return {"token": text, "logprob": token.logprob, "bytes": list(text.encode(errors="replace"))}


def completion_of(results: list[InferenceResult]) -> dict[str, Any]:
    """The `chat.completion` of a call's answers, one choice each in order, their usage
    summed (the prompt counted once, as OpenAI does) and, for more than one, each one's
    correlation id and cache status under `llmq.choices`."""
    body = completion(results[0])
    if len(results) == 1:
        return body
    body["choices"] = [
        {**completion(result)["choices"][0], "index": i} for i, result in enumerate(results)
    ]
    usage = summed([r.response.usage for r in results if r.response is not None])
    body["usage"] = None if usage is None else usage.model_dump(exclude_none=True)
    body["llmq"]["choices"] = [
        {"correlation_id": r.correlation_id, "cache": r.cache.value} for r in results
    ]
    return body


def summed(usages: list[Usage]) -> Usage | None:
    """The usage of n answers to one prompt: the prompt (and its cached tokens) counted
    once, as OpenAI does."""
    if not usages:
        return None
    prompt, answers = usages[0].prompt_tokens, sum(u.completion_tokens for u in usages)
    return usages[0].model_copy(
        update={"completion_tokens": answers, "total_tokens": prompt + answers}
    )


@dataclass(frozen=True)
class Chunks:
    """The `chat.completion.chunk` events of one streamed answer, as OpenAI sends them: the
    role first, then content, then the finish reason, then (include_usage) the usage with no
    choices; every chunk but that one carries `usage: null` when it is asked for."""

    OBJECT: ClassVar[str] = "chat.completion.chunk"
    ID_PREFIX: ClassVar[str] = "chatcmpl-"

    correlation_id: str
    created: int
    model: str
    include_usage: bool
    body: ChatBody | None = None
    """The request's, when its answer may be tool calls (read from the text once it is whole)."""

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be tool calls: read from its text, sent whole once read."""
        return self.body is not None and self.body.calls_tools

    def calls_of(self, text: str) -> list[ToolCall] | None:
        """The tool calls an answer's whole text makes; None when it makes none."""
        return None if self.body is None else self.body.calls_in(text)

    def calls(
        self, calls: list[ToolCall], logprobs: list[TokenLogprob] | None = None, index: int = 0
    ) -> dict[str, Any]:
        """The chunk of a choice's tool calls, each whole, as a client that joins deltas
        reads them (each with its index, id, type, name and arguments)."""
        delta = {"tool_calls": [{"index": i, **c.model_dump()} for i, c in enumerate(calls)]}
        lp = None if logprobs is None else logprobs_body(logprobs)
        return self._wrap({"index": index, "delta": delta, "logprobs": lp, "finish_reason": None})

    def role(self, index: int = 0) -> dict[str, Any] | None:
        """The chunk that opens a choice (None where the API has none); its content is null
        where the answer may be tool calls, as a whole answer of calls has it."""
        delta = {"role": "assistant", "content": None if self.calls_tools else ""}
        return self._wrap({"index": index, "delta": delta, "logprobs": None, "finish_reason": None})

    def content(
        self,
        text: str,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A piece of a choice's text; `offset`: the characters of the answer before it."""
        return self._wrap(self._choice(index, text, None, logprobs, offset))

    def finish(
        self,
        reason: str,
        logprobs: list[TokenLogprob] | None = None,
        index: int = 0,
        offset: int = 0,
    ) -> dict[str, Any]:
        return self._wrap(self._choice(index, None, reason, logprobs, offset))

    def usage(self, usage: Usage | None) -> dict[str, Any]:
        return {
            **self._head(),
            "choices": [],
            "usage": None if usage is None else usage.model_dump(exclude_none=True),
        }

    def _choice(
        self,
        index: int,
        text: str | None,
        finish_reason: str | None,
        logprobs: list[TokenLogprob] | None,
        offset: int,
    ) -> dict[str, Any]:
        return {
            "index": index,
            "delta": {} if text is None else {"content": text},
            "logprobs": None if logprobs is None else logprobs_body(logprobs),
            "finish_reason": finish_reason,
        }

    def _wrap(self, choice: dict[str, Any]) -> dict[str, Any]:
        body = {**self._head(), "choices": [choice]}
        if self.include_usage:
            body["usage"] = None
        return body

    def _head(self) -> dict[str, Any]:
        return {
            "id": f"{self.ID_PREFIX}{self.correlation_id}",
            "object": self.OBJECT,
            "created": self.created,
            "model": self.model,
        }


def error_body(
    code: ErrorCode, message: str, status: int | None = None, param: str | None = None
) -> tuple[int, dict[str, Any]]:
    """The HTTP status and OpenAI's error body for an llmq error (`param`: the field at
    fault, if one is), with OpenAI's code where it has one of its own (OPENAI_CODES)."""
    status = status or STATUS[code]
    kind = TYPES.get(status, "rate_limit_error" if status == 429 else "server_error")
    named = OPENAI_CODES.get(code, code.value)
    return status, {"error": {"message": message, "type": kind, "param": param, "code": named}}


def param_name(loc: tuple[str | int, ...]) -> str | None:
    """A field's location as OpenAI's errors name it: "messages[0].content"; None for the
    body as a whole."""
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else f".{part}" if name else str(part)
    return name or None


def retry_after(error: LlmqError) -> dict[str, str]:
    """The Retry-After header of an error that says when to retry (a 429, a 503
    budget_unavailable): whole seconds, rounded up."""
    if error.retry_after_s is None:
        return {}
    return {"Retry-After": str(max(1, math.ceil(error.retry_after_s)))}
