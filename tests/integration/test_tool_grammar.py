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

from schemas.tools import Tool, call_grammar, tool_calls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ZONE = {
    "type": "object",
    "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    Tool.model_validate({"type": "function", "function": {"name": "get_time", "parameters": ZONE}}),
    Tool.model_validate({"type": "function", "function": {"name": "ping"}}),
]


def _call(name: str, arguments: str, gap: str = "\n") -> str:
    return f'<tool_call>{gap}{{"name": "{name}", "arguments": {arguments}}}{gap}</tool_call>'


def _held(tokenizer: PreTrainedTokenizerBase, parallel: bool | None) -> Any:
    """Whether the engine would let the model write a text, under this grammar."""
    grammar = llguidance.grammar_from("grammar", call_grammar(TOOLS, parallel))  # as vLLM
    assert isinstance(tokenizer, TokenizersBackend)  # a fast tokenizer, as vLLM's
    lexicon = llguidance.hf.from_tokenizer(tokenizer)
    assert llguidance.LLMatcher.validate_grammar(grammar, lexicon) == ""

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
    two = _call("ping", "{}", "") + "\n" + _call("get_time", '{"zone":"CET"}')
    for text in ("It is noon in Paris.", "Sure. " + _call("get_time", '{"zone":"UTC"}'), two):
        assert held(text), text
        if "<tool_call>" in text:  # what it lets through is read back as calls
            calls = tool_calls(TOOLS, "auto", text, "ctx") or []
            assert len(calls) == text.count("<tool_call>")
            assert all(json.loads(c.function.arguments) is not None for c in calls)
    assert not held(_call("nope", "{}"))  # a function not offered
    assert not held(_call("get_time", '{"zone":"PST"}'))  # outside its schema
    assert not held(_call("get_time", '{"zone":"UTC","at":1}'))  # no other properties
    assert not held(_call("ping", "{}") + " and more")  # the answer ends with its calls
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
