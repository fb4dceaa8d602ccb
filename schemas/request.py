"""The request contract: an OpenAI chat-completions body inside llmq's envelope."""

from __future__ import annotations

import json
import re
import time
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    JsonValue,
    StrictBool,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from schemas.contract import Contract
from schemas.errors import ErrorCode, LlmqError
from schemas.lanes import Lane
from schemas.names import RESULTS
from schemas.tools import (
    MAX_CALL_ID_CHARS,
    MAX_TOOLS,
    NamedToolChoice,
    Tool,
    ToolCall,
    ToolChoice,
    call_grammar,
    calls_tools,
    output_schema,
    tool_calls,
    tool_dicts,
)

SCHEMA_VERSION: Literal[1] = 1
DEFAULT_TENANT = "default"
"""The tenant of a request that names none."""

CHARS_PER_TOKEN = 4
"""How llmq estimates tokens before a tokenizer has seen a prompt (rate limits, routing,
the autoscaler's backlog): English text averages about 4 characters a token."""
TEMPLATE_TOKENS = 64
"""Tokens a chat template may add to a prompt once (a default system prompt, a date header,
the assistant's turn): a generous margin for ChatBody.prompt_token_bound."""
TEMPLATE_TOKENS_PER_MESSAGE = 16
"""Tokens a chat template may add around each message (role markers), and each tool call."""
TOOLS_TEMPLATE_TOKENS = 512
"""Tokens a chat template may add to show the tools (its instructions on calling them)."""
MAX_MESSAGES = 256
MAX_CONTENT_CHARS = 200_000
MAX_PROMPT_CHARS = 400_000
"""Characters across all messages. The stream processor refuses records over 450 kB anyway;
this bound lets a client learn it before sending (the model's own limit may be lower)."""
MAX_RECORD_BYTES = 450_000
"""The largest request record admitted: its work item, which may also carry the prompt as the
app sent it (before compression), must fit in Kafka's default 1 MB message."""
MAX_STOP_SEQUENCES = 4
MAX_CHOICES = 16
"""The most choices one call may ask for (OpenAI's `n`): each is a request of its own."""
MAX_TOP_LOGPROBS = 20
"""OpenAI's bound on top_logprobs."""
MAX_LOGIT_BIAS = 1_024
"""The most tokens one logit_bias may name: far more than an app sets by hand."""
MAX_REPETITION_PENALTY = 10.0
"""A bound on vLLM's repetition_penalty (which takes any positive number): past 2 a model
already avoids every token it has seen."""
MAX_SCHEMA_CHARS = 32_768
"""The largest JSON schema of a response_format, as compact JSON: room for any schema an app
writes by hand or generates from its types, far under the record's bound."""
MAX_UNIX_TIME = 1e12
"""The latest Unix time in seconds accepted (year 33658): a time in milliseconds (about
1.8e12 today) is refused rather than read as the far future."""
NAMES = "names"
"""The key, in ChatBody's validation context, of the names its sender gives its fields (a
dict: the OpenAI chat body's max_completion_tokens, the Responses API's max_output_tokens),
for its refusals to name a field the sender did not write as the sender wrote it."""


def tokens_in(chars: int) -> int:
    """Tokens in `chars` characters of text no tokenizer has seen: CHARS_PER_TOKEN
    characters a token, rounded up."""
    return -(-chars // CHARS_PER_TOKEN)


IDENTIFIER = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER.pattern)]
"""Correlation ids and tenants: printable, no spaces, safe in Redis keys and logs."""
ModelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
REPLY_TOPIC = re.compile(
    r"^(?!\.\.?$|_|.*__|.*-changelog$|llmq(?!\.results$|\.batch-results$))[A-Za-z0-9._-]{1,249}$"
)
"""A topic an app may be answered on: a name Kafka accepts (not "." or "..") that is not
Kafka's (`_`..., `__`), a faust table's changelog, or llmq's own (`llmq`... but the reply
topics llmq.results and llmq.batch-results): an error reply must never land where llmq or
Kafka would read it as their own record."""


def _reply_topic(name: str) -> str:
    if not REPLY_TOPIC.fullmatch(name):
        raise ValueError(
            "must be llmq.results or a topic of the app's own: 1 to 249 letters, digits, "
            "'.', '_' or '-'; not '.', '..', '_...', 'llmq...', '...__...' or '...-changelog'"
        )
    return name


ReplyTopic = Annotated[str, AfterValidator(_reply_topic)]


class CacheMode(StrEnum):
    """Whether the response cache may answer this request, and may keep its answer."""

    AUTO = "auto"
    """Cache only deterministic requests (temperature 0 or a fixed seed)."""
    ALWAYS = "always"
    """Opt in: cache even a sampled answer and serve it to identical requests."""
    OFF = "off"
    """Neither read nor fill the cache."""


class ChatMessage(Contract):
    """One message of an OpenAI chat: a system, user or assistant message, an assistant's
    tool calls, or a tool's result (`tool_call_id` names the call it answers)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = Field(max_length=MAX_CONTENT_CHARS)
    """The text; an answer's tool calls keep here the text they were read from."""
    tool_calls: list[ToolCall] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_call_id: str | None = Field(default=None, min_length=1, max_length=MAX_CALL_ID_CHARS)

    @model_validator(mode="before")
    @classmethod
    def _calls_without_text(cls, data: object) -> object:
        """An assistant's calls may come with no text (content null, as OpenAI sends them)."""
        if isinstance(data, dict) and data.get("tool_calls") and data.get("content") is None:
            return {**data, "content": ""}
        return data

    @model_validator(mode="after")
    def _tool_fields_where_they_belong(self) -> Self:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("tool_calls belong to an assistant message")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("a tool message, and only one, names its call: tool_call_id")
        return self

    @property
    def text(self) -> str:
        """Its content, its calls' ids, names and arguments, and the id of the call it
        answers: the text the model reads."""
        calls = "".join(
            c.id + c.function.name + c.function.arguments for c in self.tool_calls or []
        )
        return self.content + calls + (self.tool_call_id or "")


class JsonSchema(Contract):
    """OpenAI's `response_format.json_schema`: the schema the answer must follow."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        serialize_by_alias=True,
        validate_by_alias=True,
        validate_by_name=True,
    )

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = Field(default=None, max_length=4_096)
    schema_: dict[str, JsonValue] = Field(alias="schema")
    """The JSON schema itself (`schema` on the wire; the name is pydantic's own)."""
    strict: bool | None = None
    """Accepted as OpenAI's SDKs send it: llmq always holds the answer to the schema."""

    @model_validator(mode="after")
    def _bounded(self) -> Self:
        chars = len(json.dumps(self.schema_, separators=(",", ":")))
        if chars > MAX_SCHEMA_CHARS:
            raise ValueError(
                f"the schema is {chars} characters of JSON; at most {MAX_SCHEMA_CHARS}"
            )
        return self


class ResponseFormat(Contract):
    """OpenAI's `response_format`: plain text (the default), any JSON object, or JSON that
    follows a schema."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_when_asked(self) -> Self:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only then")
        return self


class ChatBody(Contract):
    """The OpenAI chat-completions body: the fields llmq serves, each bounded."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    model: ModelName | None = None
    """Accepted so that an OpenAI body can be sent as it is; the envelope's model wins."""
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Above 0 in the record; OpenAI's 0 (the likeliest token only) is read as greedy."""
    stop: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] | None = Field(
        default=None, max_length=MAX_STOP_SEQUENCES
    )
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    """Any 64-bit integer, as vLLM's server takes it; -1 is no seed, as vLLM reads it (a
    sample of its own, not cached)."""
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    """With logprobs: how many of the most likely tokens to give at each position."""
    logit_bias: (
        dict[Annotated[int, Field(ge=0, lt=2**31)], Annotated[float, Field(ge=-100, le=100)]] | None
    ) = Field(default=None, max_length=MAX_LOGIT_BIAS)
    """Token id (of the model's own tokenizer) -> a bias added to its logit: -100 bans the
    token, 100 all but forces it. It pins the request to the model it names."""
    ignore_eos: bool = False
    """vLLM's extension: generate exactly max_tokens, past the end-of-sequence token, so that
    a benchmark or a test does not depend on when the model would stop."""
    top_k: int | None = Field(default=None, ge=-1, lt=2**31)
    """vLLM's extension: sample from the k most likely tokens only (0 or -1: all of them)."""
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    """vLLM's extension: drop tokens less likely than this fraction of the likeliest one."""
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=MAX_REPETITION_PENALTY)
    """vLLM's extension: above 1 discourages tokens already in the prompt or the answer."""
    min_tokens: int | None = Field(default=None, ge=0, le=32_768)
    """vLLM's extension: no end-of-sequence token (nor stop) before this many tokens."""
    raw_prompt: Literal[True] | None = None
    """True: the one user message is the prompt as it is, with no chat template around it
    (OpenAI's text completions, `/v1/completions`)."""
    stream: bool = False
    response_format: ResponseFormat | None = None
    """JSON output, held to it token by token by the engine (vLLM's structured outputs)."""
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    """Functions the answer may call; shown to the model through its chat template."""
    tool_choice: ToolChoice | None = None
    """With tools: "none" (a text answer), "auto" (text or calls, as the model decides),
    "required" (calls of any of them) or a named function (one call of it), the calls held
    to the functions' schemas."""
    parallel_tool_calls: StrictBool | None = None
    """False: "required" and "auto" make one call at most (a bool, as OpenAI takes it: not
    "yes" nor 1)."""

    @model_validator(mode="before")
    @classmethod
    def _stop_as_list(cls, data: object) -> object:
        """OpenAI allows `stop` to be one string; keep one shape."""
        if isinstance(data, dict) and isinstance(data.get("stop"), str):
            return {**data, "stop": [data["stop"]]}
        return data

    @model_validator(mode="before")
    @classmethod
    def _top_p_zero_is_greedy(cls, data: object) -> object:
        """OpenAI takes top_p 0, the likeliest token only, which vLLM refuses: that is greedy
        decoding, temperature 0 (top_p 1, so that it is the greedy request, cached as one)."""
        if not isinstance(data, dict):
            return data
        top_p = data.get("top_p")
        if isinstance(top_p, int | float) and not isinstance(top_p, bool) and top_p == 0:
            return {**data, "top_p": 1.0, "temperature": 0.0}
        return data

    @field_validator("seed")
    @classmethod
    def _minus_one_is_none(cls, seed: int | None) -> int | None:
        """A seed of -1 is none, as vLLM reads it (whatever JSON type it came as)."""
        return None if seed == -1 else seed

    @property
    def json_format(self) -> ResponseFormat | None:
        """The response_format when it asks for JSON; None for plain text."""
        fmt = self.response_format
        return None if fmt is None or fmt.type == "text" else fmt

    @property
    def deterministic(self) -> bool:
        """Greedy or seeded: the same request gives the same answer."""
        return self.temperature == 0.0 or self.seed is not None

    @property
    def vllm_sampling(self) -> dict[str, int | float]:
        """vLLM's sampling extensions this body sets to something other than their neutral
        value: a neutral value changes no answer, nor the fingerprint."""
        penalty = self.repetition_penalty
        given = {
            "top_k": None if self.top_k in (-1, 0) else self.top_k,
            "min_p": self.min_p or None,
            "repetition_penalty": None if penalty == 1.0 else penalty,
            "min_tokens": self.min_tokens or None,
        }
        return {name: value for name, value in given.items() if value is not None}

    @property
    def tool_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer's tool calls are held to; None for a text answer."""
        return output_schema(self.tools or [], self.tool_choice, self.parallel_tool_calls)

    @property
    def chooses_calls(self) -> bool:
        """Whether the model chooses text or calls (tool_choice "auto"): its calls are read
        from free text, which only a model with a tool_call_parser writes."""
        return self.tool_choice == "auto"

    @property
    def tool_grammar(self) -> str | None:
        """The grammar that holds the answer's calls under "auto"; None otherwise."""
        if not self.chooses_calls:
            return None
        return call_grammar(self.tools or [], self.parallel_tool_calls)

    @property
    def calls_tools(self) -> bool:
        """Whether the answer may be tool calls (read from the text the engine is held to)."""
        return calls_tools(self.tool_choice)

    def calls_in(self, text: str) -> list[ToolCall] | None:
        """The tool calls an answer's whole `text` makes; None when it makes none. Their
        ids are made from the messages, so the same answer to the same conversation names
        its calls alike wherever it is read."""
        if not self.calls_tools:
            return None
        digest = json.dumps([m.model_dump() for m in self.messages], separators=(",", ":"))
        return tool_calls(self.tools or [], self.tool_choice, text, digest)

    @model_validator(mode="before")
    @classmethod
    def _auto_with_tools(cls, data: Any) -> Any:
        """Tools without a choice are "auto", OpenAI's default (refused where the model's
        calls are not read)."""
        chooses = isinstance(data, dict) and data.get("tool_choice") is not None
        if isinstance(data, dict) and data.get("tools") is not None and not chooses:
            return {**data, "tool_choice": "auto"}
        return data

    @model_validator(mode="after")
    def _results_answer_calls(self) -> Self:
        """A tool message answers a call an assistant message made before it (as OpenAI
        holds a conversation to)."""
        made: set[str] = set()
        for index, message in enumerate(self.messages):
            made.update(call.id for call in message.tool_calls or [])
            if message.tool_call_id is not None and message.tool_call_id not in made:
                raise ValueError(
                    f"messages.{index}.tool_call_id {message.tool_call_id!r} names no call "
                    "an assistant message made before it (its tool_calls)"
                )
        return self

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice_among_tools(
        cls, choice: ToolChoice | None, info: ValidationInfo
    ) -> ToolChoice | None:
        """A choice of calls names tools offered, and no response_format beside them. (Not
        checked where the fields before it failed: their own errors say why.)"""
        before = info.data
        if not calls_tools(choice) or "tools" not in before or "response_format" not in before:
            return choice
        tools: list[Tool] | None = before["tools"]
        fmt: ResponseFormat | None = before["response_format"]
        if tools is None:
            raise PydanticCustomError("tool_choice", "needs tools to choose from")
        if (fmt is not None and fmt.type != "text") or before.get("raw_prompt"):
            why = "tool calls are JSON of their own: no {format} with them"
            named = {"format": _named(info, "response_format")}
            raise PydanticCustomError("tool_choice", why, named)
        offered = {tool.function.name for tool in tools}
        if isinstance(choice, NamedToolChoice) and choice.function.name not in offered:
            why = "names {name}, which is not one of the tools"
            raise PydanticCustomError("tool_choice", why, {"name": repr(choice.function.name)})
        return choice

    @field_validator("top_logprobs")
    @classmethod
    def _top_logprobs_with_logprobs(cls, top: int | None, info: ValidationInfo) -> int | None:
        if top is not None and info.data.get("logprobs") is False:
            raise PydanticCustomError("top_logprobs", "needs logprobs: true")
        return top

    @model_validator(mode="after")
    def _raw_prompt_is_one_user_message(self) -> Self:
        if self.raw_prompt and [m.role for m in self.messages] != ["user"]:
            raise ValueError("a raw prompt is one user message")
        if self.raw_prompt and not self.messages[0].content:
            raise ValueError("a raw prompt must not be empty: the engine has nothing to continue")
        return self

    @field_validator("min_tokens")
    @classmethod
    def _min_tokens_within_max(cls, least: int | None, info: ValidationInfo) -> int | None:
        most = info.data.get("max_tokens")
        if least is not None and most is not None and least > most:
            why = "min_tokens ({least}) is more than {name} ({most})"
            named = {"least": least, "name": _named(info, "max_tokens"), "most": most}
            raise PydanticCustomError("min_tokens", why, named)
        return least

    @model_validator(mode="after")
    def _prompt_bounded(self) -> Self:
        chars = self.prompt_chars()
        if chars > MAX_PROMPT_CHARS:
            raise ValueError(f"the messages hold {chars} characters; at most {MAX_PROMPT_CHARS}")
        return self

    def prompt_chars(self) -> int:
        """Characters across all messages (and the tools shown to the model): a cheap bound
        checked before tokenizing."""
        return sum(len(m.text) for m in self.messages) + len(self._tools_json())

    def prompt_token_bound(self) -> int:
        """Prompt tokens the request cannot exceed: a token holds at least one UTF-8 byte of
        text, plus what a chat template adds. For budgets, which must not be overrun."""
        text = sum(len(m.text.encode()) for m in self.messages)
        calls = sum(len(m.tool_calls or []) for m in self.messages)
        marks = TEMPLATE_TOKENS_PER_MESSAGE * (len(self.messages) + calls)
        tools = len(self._tools_json().encode()) + TOOLS_TEMPLATE_TOKENS if self.tools else 0
        return text + TEMPLATE_TOKENS + marks + tools

    def _tools_json(self) -> str:
        return "" if self.tools is None else json.dumps(tool_dicts(self.tools))

    def estimated_tokens(self) -> int:
        """Tokens the request may use, estimated before any tokenizer runs: its prompt at
        CHARS_PER_TOKEN characters a token, rounded up, plus max_tokens. An estimate, not a
        bound: text other than English takes more tokens a character (CJK and emoji up to
        2-3 a character); prompt_token_bound is the bound."""
        return tokens_in(self.prompt_chars()) + self.max_tokens


def _named(info: ValidationInfo, field: str) -> str:
    """A ChatBody field as its sender names it (the validation context's NAMES)."""
    context = info.context if isinstance(info.context, dict) else {}
    return str(context.get(NAMES, {}).get(field, field))


class ChoiceOf(Contract):
    """The call (an HTTP request of `n` choices, the front door's) that a request is one
    choice of: the call's choices are admitted by the rate limits, or refused, together."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    call_id: Identifier
    """The call's id, shared by its choices (the front door's: its first choice's
    correlation id); a call sent again is a new call, under a new id."""
    n: int = Field(ge=2, le=MAX_CHOICES)
    """How many choices the call has: each is charged when the first to arrive is."""


class InferenceRequest(Contract):
    """What an app publishes on llmq.requests."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    correlation_id: Identifier
    tenant: Identifier = DEFAULT_TENANT
    model: ModelName | None = None
    """A model of the catalog; when absent, the body's model, then the catalog default."""
    lane: Lane = Lane.STANDARD
    reply_to: ReplyTopic = RESULTS
    deadline: float | None = Field(default=None, gt=0, le=MAX_UNIX_TIME)
    """Unix time after which the answer is no longer wanted (an `expired` error instead)."""
    cache: CacheMode = CacheMode.AUTO
    created_at: float = Field(default_factory=time.time, gt=0, le=MAX_UNIX_TIME)
    """When the app sent it (Unix time); end-to-end latency is measured from here."""
    body: ChatBody
    choice_of: ChoiceOf | None = None
    """Set on each choice of a call of several (the front door's `n`); None for a lone
    request."""

    @model_validator(mode="after")
    def _one_model(self) -> Self:
        if self.model and self.body.model and self.model != self.body.model:
            raise ValueError(
                f"envelope model {self.model!r} and body model {self.body.model!r} differ; "
                "set one of them"
            )
        return self

    @property
    def requested_model(self) -> str | None:
        """The model the app asked for, wherever it put it."""
        return self.model or self.body.model

    @property
    def cacheable(self) -> bool:
        """Whether the response cache may serve or keep this request's answer."""
        if self.cache is CacheMode.OFF:
            return False
        return self.cache is CacheMode.ALWAYS or self.body.deterministic

    def expired(self, now: float | None = None) -> bool:
        """True once the deadline has passed."""
        now = time.time() if now is None else now
        return self.deadline is not None and now > self.deadline

    def record(self) -> bytes:
        """Its llmq.requests record; LlmqError when the stream processor would refuse it for
        its size (or the broker, past 1 MB), so an app learns that before publishing."""
        value = self.model_dump_json(exclude_none=True).encode()
        check_record_size(value)
        return value


def check_record_size(value: bytes) -> None:
    """LlmqError (prompt_too_large) for a request record past MAX_RECORD_BYTES."""
    if len(value) > MAX_RECORD_BYTES:
        why = f"record is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}"
        raise LlmqError(ErrorCode.PROMPT_TOO_LARGE, why)


class RecordRefusedError(LlmqError):
    """prompt_too_large: a record past what Kafka takes on `topic` (`limit` bytes, its
    max.message.bytes, lower than llmq's own bound; None where unknown: the broker refused
    it)."""

    def __init__(self, topic: str, size: int, limit: int | None) -> None:
        takes = "past what it takes" if limit is None else f"it takes at most {limit}"
        why = (
            f"the record is {size} bytes; Kafka refuses it on {topic} ({takes}: max.message.bytes)"
        )
        super().__init__(ErrorCode.PROMPT_TOO_LARGE, why)
        self.topic = topic
        self.limit = limit
