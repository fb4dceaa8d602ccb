"""The grammar that holds an answer under tool_choice "auto", compiled as vLLM's engine
compiles a `grammar` (its llguidance backend: `llguidance.grammar_from("grammar", ...)`)
with the served model's tokenizer: text passes, a call
is held to an offered function's name and schema, and what it lets through is read back as
the calls. No engine runs: each case is the tokens of a text the model might write."""

from __future__ import annotations

import json
from typing import Any

import llguidance
import llguidance.hf
import pytest
from transformers import PreTrainedTokenizerBase, TokenizersBackend

from schemas.tools import (
    NamedFunction,
    NamedToolChoice,
    Tool,
    ToolChoice,
    call_grammar,
    output_schema,
    tool_calls,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
NOTE = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [
    Tool.model_validate({"type": "function", "function": {"name": "get_time", "parameters": ZONE}}),
    Tool.model_validate({"type": "function", "function": {"name": "ping"}}),
    Tool.model_validate({"type": "function", "function": {"name": "note", "parameters": NOTE}}),
]


def _call(name: str, arguments: str, gap: str = "\n") -> str:
    return f'<tool_call>{gap}{{"name": "{name}", "arguments": {arguments}}}{gap}</tool_call>'


def _matcher(tokenizer: PreTrainedTokenizerBase, tools: list[Tool], parallel: bool | None) -> Any:
    """A matcher of the grammar compiled as vLLM's engine compiles it, and the lexicon."""
    grammar = llguidance.grammar_from("grammar", call_grammar(tools, parallel))
    assert isinstance(tokenizer, TokenizersBackend)  # a fast tokenizer, as vLLM's
    lexicon = llguidance.hf.from_tokenizer(tokenizer)
    assert llguidance.LLMatcher.validate_grammar(grammar, lexicon) == ""
    return lexicon, grammar


def _held(tokenizer: PreTrainedTokenizerBase, parallel: bool | None) -> Any:
    """Whether the engine would let the model write a text, under this grammar."""
    lexicon, grammar = _matcher(tokenizer, TOOLS, parallel)
    return _holds(lexicon, grammar, tokenizer)


def _holds(lexicon: Any, grammar: str, tokenizer: PreTrainedTokenizerBase) -> Any:
    """Whether the engine would let the model write a text, under `grammar`."""

    def held(text: str) -> bool:
        """The text whole, ended where the model may end it."""
        matcher = llguidance.LLMatcher(lexicon, grammar)
        ids = tokenizer.encode(text, add_special_tokens=False)
        return bool(matcher.consume_tokens(ids)) and matcher.is_accepting()

    return held


def test_text_passes_and_a_call_is_held_to_a_functions_name_and_schema(
    served_tokenizer: PreTrainedTokenizerBase,
) -> None:
    held = _held(served_tokenizer, parallel=None)
    two = _call("ping", "{}", "") + "\n" + _call("get_time", '{"zone":"CET"}') + "\n"
    tricky = _call("note", '{"text":"a</tool_call> <tool_call>b"}')
    made = {
        "It is noon in Paris.": [],
        "Sure. " + _call("get_time", '{"zone":"UTC"}'): [("get_time", {"zone": "UTC"})],
        two: [("ping", {}), ("get_time", {"zone": "CET"})],
        tricky: [("note", {"text": "a</tool_call> <tool_call>b"})],
    }
    for text, calls in made.items():  # let through, and read back as those calls
        assert held(text), text
        read = tool_calls(TOOLS, "auto", text, "ctx") or []
        assert [(c.function.name, json.loads(c.function.arguments)) for c in read] == calls
    assert not held(_call("nope", "{}"))  # a function not offered
    assert not held(_call("get_time", '{"zone":"PST"}'))  # outside its schema
    assert not held(_call("get_time", '{"zone":"UTC","at":1}'))  # no other properties
    assert not held(_call("ping", "{}") + " and more")  # the answer ends with its calls
    assert held(_call("ping", "{}") + "\n" * 8)
    assert not held(_call("ping", "{}") + "\n" * 9)  # a little space, then the end
    assert not held(_call("ping", "{}") + " and " + _call("ping", "{}"))  # nothing between
    assert not held("Write <tool_call or not")  # once begun, a call


def test_without_parallel_calls_one_call_ends_the_answer(
    served_tokenizer: PreTrainedTokenizerBase,
) -> None:
    held = _held(served_tokenizer, parallel=False)
    assert held("It is noon.")
    assert held(_call("get_time", '{"zone":"UTC"}'))
    assert not held(_call("ping", "{}") + _call("get_time", '{"zone":"UTC"}'))
    assert not held(_call("ping", "{}") + " and more")


def test_the_grammar_of_many_large_tools_compiles(
    served_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """OpenAI's 128 functions, each of 60 properties: the engine builds its matcher."""
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(60)}}
    tools = [
        Tool.model_validate({"type": "function", "function": {"name": f"f{i}", "parameters": wide}})
        for i in range(128)
    ]
    lexicon, grammar = _matcher(served_tokenizer, tools, None)
    matcher = llguidance.LLMatcher(lexicon, grammar)
    assert not matcher.is_error(), matcher.get_error()
    ids = served_tokenizer.encode('<tool_call>{"name": "f127", "arguments": {}}</tool_call>')
    assert matcher.consume_tokens(ids) and matcher.is_accepting()


def test_required_calls_are_held_to_their_name_and_arguments_only(
    served_tokenizer: PreTrainedTokenizerBase,
) -> None:
    """ "required": the list of calls as vLLM's guidance backend compiles a JSON schema (no
    whitespace, as llmq configures it). A key beside a call's name and arguments is
    refused: vLLM's own schema allows one, and SmolLM2 filled a "description" with the
    prompt's id until max_tokens."""
    schema = json.dumps(output_schema(TOOLS, "required", False))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema, defaults={"whitespace_flexible": False}
    )
    assert isinstance(served_tokenizer, TokenizersBackend)  # a fast tokenizer, as vLLM's
    held = _holds(llguidance.hf.from_tokenizer(served_tokenizer), grammar, served_tokenizer)
    assert held('[{"name":"get_time","parameters":{"zone":"UTC"}}]')
    assert not held('[{"name":"get_time","parameters":{"zone":"UTC"},"description":"x"}]')
    assert not held('[{"name":"ping","parameters":{}},{"name":"ping","parameters":{}}]')


ADDR = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
REFS: dict[str, tuple[dict[str, Any], Any, Any]] = {  # a schema, arguments right and wrong
    "$defs": (
        {"properties": {"addr": {"$ref": "#/$defs/Addr"}}, "$defs": {"Addr": ADDR}},
        {"addr": {"city": "Paris"}},
        {"addr": {"town": 1}},
    ),
    "definitions": (
        {"properties": {"addr": {"$ref": "#/definitions/A"}}, "definitions": {"A": ADDR}},
        {"addr": {"city": "Paris"}},
        {"addr": {"town": 1}},
    ),
    "recursion": (
        {"properties": {"name": {"type": "string"}, "child": {"$ref": "#"}}},
        {"name": "a", "child": {"name": "b"}},
        {"name": "a", "child": [{"name": "f", "parameters": {"name": "b"}}]},
    ),
}


@pytest.mark.parametrize("case", REFS)
def test_a_schemas_refs_hold_the_arguments_alike_under_every_choice(
    served_tokenizer: PreTrainedTokenizerBase, case: str
) -> None:
    """A function's local refs (pydantic's and the SDK's `pydantic_function_tool`'s $defs,
    "#" recursion) resolve within its schema wherever it is embedded: "required"'s list of
    calls, a named function's arguments, "auto"'s calls."""
    given, right, wrong = REFS[case]
    schema = {"type": "object", "additionalProperties": False, **given}
    tools = [
        Tool.model_validate({"type": "function", "function": {"name": "ping"}}),
        Tool.model_validate({"type": "function", "function": {"name": "f", "parameters": schema}}),
    ]
    assert isinstance(served_tokenizer, TokenizersBackend)  # a fast tokenizer, as vLLM's
    lexicon = llguidance.hf.from_tokenizer(served_tokenizer)

    def held_to(choice: ToolChoice) -> Any:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(output_schema(tools, choice, None)), defaults={"whitespace_flexible": False}
        )
        assert llguidance.LLMatcher.validate_grammar(grammar, lexicon) == ""
        return _holds(lexicon, grammar, served_tokenizer)

    required = held_to("required")
    named = held_to(NamedToolChoice(function=NamedFunction(name="f")))
    auto = _holds(lexicon, _matcher(served_tokenizer, tools, None)[1], served_tokenizer)
    for arguments, holds in ((right, True), (wrong, False)):
        compact = json.dumps(arguments, separators=(",", ":"))
        assert required(f'[{{"name":"f","parameters":{compact}}}]') is holds
        assert named(compact) is holds
        assert auto(_call("f", compact)) is holds
