"""OpenAI's Responses API (`/v1/responses`) through the real `openai` SDK on the session's
stack: text input and instructions answered as a `response`, whole or streamed, cached,
held to a JSON schema, with log-probabilities; stored, fetched, continued from and deleted;
and what is not served refused by name."""

from __future__ import annotations

import itertools
import json
from typing import Any

import openai
import pytest
from openai import OpenAI

from tests.integration.helpers import VERDICT_SCHEMA, VERDICTS, unique_prompt

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
EXACT: dict[str, Any] = {"extra_body": {"ignore_eos": True}}
"""Generate exactly max_output_tokens, whatever the model would say."""


def test_input_and_instructions_are_answered_as_a_response(sdk: OpenAI) -> None:
    question = unique_prompt("Name a colour.")
    ask: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_output_tokens": 8}
    answer = sdk.responses.create(**ask, input=question, instructions="Be brief.", **EXACT)
    assert answer.object == "response" and answer.id.startswith("resp_")
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == "max_output_tokens"
    assert answer.output_text and answer.usage is not None and answer.usage.output_tokens == 8
    extras = (answer.model_extra or {})["llmq"]
    assert (extras["cache"], extras["model_used"]) == ("none", MODEL)
    # The instructions are the system message of the same request as a chat.
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": question},
    ]
    chat = sdk.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=8, **EXACT
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == answer.usage.input_tokens
    assert (chat.model_extra or {})["llmq"]["cache"] == "exact"
    assert chat.choices[0].message.content == answer.output_text
    # Messages of text parts are the same conversation.
    parts = [
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "input_text", "text": question}]},
    ]
    again = sdk.responses.create(**ask, input=parts, **EXACT)  # type: ignore[arg-type]
    assert (again.model_extra or {})["llmq"]["cache"] == "exact"
    assert again.output_text == answer.output_text


def test_a_json_schema_holds_and_logprobs_come_when_included(sdk: OpenAI) -> None:
    verdict = sdk.responses.create(
        model=MODEL,
        input=unique_prompt("Is the sky blue? Answer in JSON."),
        max_output_tokens=32,
        text={"format": {"type": "json_schema", "name": "verdict", "schema": VERDICT_SCHEMA}},
    )
    assert json.loads(verdict.output_text) in VERDICTS, verdict.output_text
    ranked = sdk.responses.create(
        model=MODEL,
        input=unique_prompt("Name a colour."),
        max_output_tokens=4,
        top_logprobs=2,
        include=["message.output_text.logprobs"],
        **EXACT,
    )
    [message] = ranked.output
    assert message.type == "message"
    [part] = message.content
    assert part.type == "output_text" and part.logprobs is not None
    assert len(part.logprobs) == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in part.logprobs)


def test_a_streamed_response_sends_its_events_then_the_whole(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {
        "model": MODEL,
        "input": unique_prompt("Once upon a time"),
        "max_output_tokens": 8,
        "temperature": 0,
        **EXACT,
    }
    events = list(sdk.responses.create(**ask, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.output_text == text and text
    assert last.response.usage is not None and last.response.usage.output_tokens == 8
    whole = sdk.responses.create(**ask)  # the same request: no second generation
    assert (whole.model_extra or {})["llmq"]["cache"] in ("exact", "coalesced")
    assert whole.output_text == text


def test_a_stored_response_is_fetched_continued_from_and_deleted(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_output_tokens": 8, **EXACT}
    questions = [unique_prompt(q) for q in ("Name a colour.", "And the sea?", "And grass?")]
    first = sdk.responses.create(**ask, input=questions[0], instructions="Be brief.")
    fetched = sdk.responses.retrieve(first.id)
    assert (fetched.id, fetched.output_text) == (first.id, first.output_text)
    assert (first.model_extra or {})["store"] is True
    # Each continues the conversation before it, without the first one's instructions: the
    # chat request of the same messages is the same request (an exact cache hit).
    conversation: Any = []
    previous = first
    for before, question in itertools.pairwise(questions):
        conversation += [
            {"role": "user", "content": before},
            {"role": "assistant", "content": previous.output_text},
        ]
        answer = sdk.responses.create(**ask, input=question, previous_response_id=previous.id)
        assert answer.previous_response_id == previous.id
        chat = sdk.chat.completions.create(
            model=MODEL,
            messages=[*conversation, {"role": "user", "content": question}],
            temperature=0,
            max_tokens=8,
            **EXACT,
        )
        assert (chat.model_extra or {})["llmq"]["cache"] == "exact"
        assert chat.choices[0].message.content == answer.output_text
        assert answer.usage is not None and chat.usage is not None
        assert chat.usage.prompt_tokens == answer.usage.input_tokens
        previous = answer
    # The last one's input items: the conversation it followed, newest first, paged.
    followed = [*conversation, {"role": "user", "content": questions[-1]}]
    items = list(sdk.responses.input_items.list(previous.id, limit=2))
    assert [(i.role, i.content[0].text) for i in items] == [  # type: ignore[union-attr,index]
        (m["role"], m["content"]) for m in followed[::-1]
    ]
    for bad in ({"limit": 0}, {"order": "newest"}, {"after": "msg_none"}):
        with pytest.raises(openai.BadRequestError, match=r"limit|order|after"):
            sdk.responses.input_items.list(previous.id, **bad)
    # Deleted, it can be neither fetched nor continued from (OpenAI's 400 for the latter);
    # nor can one not stored.
    sdk.responses.delete(first.id)
    unstored = sdk.responses.create(**ask, input=unique_prompt("Hi"), store=False)
    assert (unstored.model_extra or {})["store"] is False
    for gone in (first.id, unstored.id, "resp_never"):
        with pytest.raises(openai.NotFoundError, match="no stored response"):
            sdk.responses.retrieve(gone)
        with pytest.raises(openai.BadRequestError, match="no stored response") as refused:
            sdk.responses.create(**ask, input="Hi", previous_response_id=gone)
        assert (refused.value.code, refused.value.param) == (
            "previous_response_not_found",
            "previous_response_id",
        )
        with pytest.raises(openai.NotFoundError, match="no stored response"):
            sdk.responses.input_items.list(gone)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.delete(first.id)


def test_a_streamed_response_is_stored_as_its_last_event_carries_it(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "max_output_tokens": 6, **EXACT}
    with sdk.responses.create(**ask, input=unique_prompt("Hi"), stream=True) as stream:
        events = list(stream)
    last = events[-1]
    assert last.type == "response.incomplete"
    fetched = sdk.responses.retrieve(last.response.id)
    assert fetched.output_text == last.response.output_text and fetched.output_text
    assert fetched.status == "incomplete"


def test_what_is_not_served_is_refused_by_name(sdk: OpenAI) -> None:
    ask: dict[str, Any] = {"model": MODEL, "input": "Hi", "max_output_tokens": 4}
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"conversation": "conv_1"}, "conversation"),
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "type"),
    ]
    for fields, why in refusals:
        with pytest.raises(openai.BadRequestError) as bad:
            sdk.responses.create(**{**ask, **fields})
        assert why in bad.value.message, (fields, bad.value.message)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.create(**{**ask, "model": "gpt-9"})
