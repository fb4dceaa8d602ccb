"""Input items that reference stored output items (`item_reference`, as the Vercel AI SDK
sends earlier answers while `store` is on), through a front door whose llmq client and
response store are fakes: a reference stands for the tenant's stored item; one naming no
such item is a 400 naming it; a batch line, which stands alone, has them refused by name."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI
from openai.types.responses import (
    EasyInputMessageParam,
    FunctionToolParam,
    ResponseInputParam,
)
from openai.types.responses.response_input_param import FunctionCallOutput, ItemReference

from gateway.app import build
from gateway.batch.lines import RESPONSES_ENDPOINT, read_line
from gateway.response_store import Kept
from gateway.response_tools import call_item
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import DEFAULT_TENANT, MAX_MESSAGES, ChatMessage, InferenceRequest
from schemas.result import (
    ChatCompletion,
    Choice,
    ChoiceLogprobs,
    InferenceResult,
    TokenLogprob,
    Usage,
)
from schemas.tenants import TenantPolicy
from schemas.tools import FunctionCall, ToolCall

MODEL = Catalog.builtin().default
CALL = ToolCall(id="call_7", function=FunctionCall(name="weather", arguments='{"city": "Oslo"}'))
TOOL: FunctionToolParam = {
    "type": "function",
    "name": "weather",
    "parameters": {"type": "object"},
    "strict": False,
}


class Client:
    """llmq's client as the routes use it: each request published is kept, and answered at
    once with the next of `answers`."""

    def __init__(self, *answers: ChatMessage) -> None:
        self.answers = list(answers)
        self.submitted: list[InferenceRequest] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request)

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        message = self.answers.pop(0)
        logprobs = ChoiceLogprobs(content=[TokenLogprob(token=message.content or "", logprob=0)])
        finish = "tool_calls" if message.tool_calls else "stop"
        choice = Choice(message=message, finish_reason=finish, logprobs=logprobs)
        usage = Usage(prompt_tokens=5, completion_tokens=1, total_tokens=6)
        response = ChatCompletion(id="x", created=7, model=MODEL, choices=[choice], usage=usage)
        return InferenceResult(
            correlation_id=correlation_id, tenant="t", status="ok", response=response
        )


class Workers:
    async def serves(self, models: object, **_: Any) -> bool:
        return True


class Store:
    """The response store: each tenant's responses kept, by id."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], Kept] = {}
        self.asked: list[str] = []

    async def get(self, tenant: str, response_id: str) -> Kept | None:
        self.asked.append(response_id)
        return self.kept.get((tenant, response_id))

    async def keep(self, tenant: str, kept: Kept) -> None:
        self.kept[tenant, kept.response["id"]] = kept

    async def outputs(
        self, tenant: str, response_ids: list[str]
    ) -> dict[str, list[dict[str, Any]] | None]:
        self.asked += response_ids
        kept = {r: self.kept.get((tenant, r)) for r in response_ids}
        return {r: None if k is None else k.response["output"] for r, k in kept.items()}


def _sdk(monkeypatch: pytest.MonkeyPatch, client: Client, store: Store) -> OpenAI:
    """The SDK on an app without its lifespan, its client, workers and store the fakes."""
    app: FastAPI = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    monkeypatch.setattr(app.state.door, "responses", store)
    return OpenAI(api_key="k", base_url="http://testserver/v1", http_client=TestClient(app))


def test_a_second_turn_referencing_the_first_answer_follows_its_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It was a 400: input items of type 'item_reference' are not served."""
    answers = [ChatMessage(role="assistant", content=text) for text in ("Blue", "Green")]
    client = Client(*answers)
    sdk = _sdk(monkeypatch, client, Store())
    asked: EasyInputMessageParam = {"role": "user", "content": "Name a colour."}
    first = sdk.responses.create(
        model=MODEL, input=[asked], include=["message.output_text.logprobs"]
    )
    [message] = first.output
    assert message.type == "message"
    assert message.content[0].logprobs  # type: ignore[union-attr]  # stored with them
    second = sdk.responses.create(
        model=MODEL,
        input=[asked, _reference(message.id), {"role": "user", "content": "And the sea?"}],
    )
    assert second.output_text == "Green"
    assert [(m.role, m.content) for m in client.submitted[1].body.messages] == [
        ("user", "Name a colour."),
        ("assistant", "Blue"),
        ("user", "And the sea?"),
    ]


def test_a_reference_to_the_response_continued_is_left_out_not_repeated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its answer is in the conversation previous_response_id continues: the model saw it
    twice, and the request's fingerprint was not that of the same conversation sent whole."""
    answers = [ChatMessage(role="assistant", content=text) for text in ("Blue", "Green")]
    client = Client(*answers)
    sdk = _sdk(monkeypatch, client, Store())
    first = sdk.responses.create(model=MODEL, input="Name a colour.")
    [message] = first.output
    assert message.id is not None
    sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        input=[_reference(message.id), {"role": "user", "content": "And the sea?"}],
    )
    assert [(m.role, m.content) for m in client.submitted[1].body.messages] == [
        ("user", "Name a colour."),
        ("assistant", "Blue"),
        ("user", "And the sea?"),
    ]


def test_a_reference_to_a_call_beside_one_to_its_responses_message_is_that_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call's id (fc_...) names no response: it is found in the one its message names."""
    written = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    said = ChatMessage(role="assistant", content=f"Let me look. {written}", tool_calls=[CALL])
    client = Client(said, ChatMessage(role="assistant", content="Sunny"))
    sdk = _sdk(monkeypatch, client, Store())
    asked: EasyInputMessageParam = {"role": "user", "content": "Weather in Oslo?"}
    first = sdk.responses.create(model=MODEL, input=[asked], tools=[TOOL])
    message, call = first.output
    assert message.type == "message" and call.type == "function_call" and call.id is not None
    output: FunctionCallOutput = {
        "type": "function_call_output",
        "call_id": CALL.id,
        "output": "sunny",
    }
    given: ResponseInputParam = [asked, _reference(message.id), _reference(call.id), output]
    sdk.responses.create(model=MODEL, input=given, tools=[TOOL])
    assistant, tool = client.submitted[1].body.messages[1:]
    assert (assistant.role, assistant.content) == ("assistant", "Let me look.")
    assert assistant.tool_calls == [CALL]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", CALL.id, "sunny")


def test_a_reference_to_a_call_alone_is_that_call_of_a_response_of_calls_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A response that makes calls and writes no text has no message to reference: its call's
    id (fc_<cid>_<n>) names it (it named none, and the reference was a 400)."""
    written = '<tool_call>\n{"name": "weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    said = ChatMessage(role="assistant", content=written, tool_calls=[CALL])
    client = Client(said, ChatMessage(role="assistant", content="Sunny"))
    sdk = _sdk(monkeypatch, client, Store())
    asked: EasyInputMessageParam = {"role": "user", "content": "Weather in Oslo?"}
    first = sdk.responses.create(model=MODEL, input=[asked], tools=[TOOL])
    [call] = first.output
    assert call.type == "function_call" and call.id == f"fc_{first.id.removeprefix('resp_')}_0"
    output: FunctionCallOutput = {
        "type": "function_call_output",
        "call_id": CALL.id,
        "output": "sunny",
    }
    given: ResponseInputParam = [asked, _reference(call.id), output]
    assert sdk.responses.create(model=MODEL, input=given, tools=[TOOL]).output_text == "Sunny"
    assistant, tool = client.submitted[1].body.messages[1:]
    assert (assistant.role, assistant.tool_calls) == ("assistant", [CALL])
    assert not assistant.content
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", CALL.id, "sunny")


def _reference(item_id: str) -> ItemReference:
    return {"type": "item_reference", "id": item_id}


def _unknown(sdk: OpenAI, store: Store) -> str:
    return "msg_gone"


def _another_tenants(sdk: OpenAI, store: Store) -> str:
    """The message of a response stored for another tenant."""
    part = {"type": "output_text", "text": "Blue", "annotations": []}
    item = {"type": "message", "id": "msg_x", "role": "assistant", "content": [part]}
    store.kept["other", "resp_x"] = Kept({"id": "resp_x", "output": [item]}, [])
    return "msg_x"


def _an_older_call_alone(sdk: OpenAI, store: Store) -> str:
    """A call an older door stored, its id fc_<the call's digest>, without a reference to its
    response's message: an id that names no response."""
    item = call_item(CALL, f"fc_{CALL.id.removeprefix('call_')}", "completed")
    store.kept[DEFAULT_TENANT, "resp_7"] = Kept({"id": "resp_7", "output": [item]}, [])
    return str(item["id"])


def _another_tenants_call(sdk: OpenAI, store: Store) -> str:
    """The call of a response stored for another tenant, its id naming that response."""
    item = call_item(CALL, "fc_x_0", "completed")
    store.kept["other", "resp_x"] = Kept({"id": "resp_x", "output": [item]}, [])
    return "fc_x_0"


def _not_stored(sdk: OpenAI, store: Store) -> str:
    """The message of a response answered with `store: false`."""
    [message] = sdk.responses.create(model=MODEL, input="Name a colour.", store=False).output
    assert message.type == "message" and not store.kept
    return message.id


@pytest.mark.parametrize(
    "stored",
    [_unknown, _another_tenants, _an_older_call_alone, _another_tenants_call, _not_stored],
)
def test_a_reference_to_no_stored_item_of_the_tenants_is_a_400_naming_it(
    monkeypatch: pytest.MonkeyPatch, stored: Callable[[OpenAI, Store], str]
) -> None:
    client, store = Client(ChatMessage(role="assistant", content="Blue")), Store()
    sdk = _sdk(monkeypatch, client, store)
    item_id = stored(sdk, store)
    sent = len(client.submitted)
    given: ResponseInputParam = [{"role": "user", "content": "Hi"}, _reference(item_id)]
    with pytest.raises(openai.BadRequestError, match=f"no stored item '{item_id}'") as caught:
        sdk.responses.create(model=MODEL, input=given)
    assert (caught.value.param, caught.value.type) == ("input[1].id", "invalid_request_error")
    assert "store false" in caught.value.message  # why a stored response may not be
    assert len(client.submitted) == sent


def test_references_to_more_messages_than_a_request_holds_fetch_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each names a message: such a body is refused once read, so none is looked up."""
    store = Store()
    sdk = _sdk(monkeypatch, Client(), store)
    given: ResponseInputParam = [_reference(f"msg_{i}") for i in range(MAX_MESSAGES + 1)]
    with pytest.raises(openai.BadRequestError, match=f"more than the {MAX_MESSAGES}") as caught:
        sdk.responses.create(model=MODEL, input=given)
    assert caught.value.param == "input" and store.asked == []


def test_a_batch_line_referencing_a_stored_item_is_refused_by_name() -> None:
    """A batch line stands alone: no stored response is looked up for it."""
    given = [{"role": "user", "content": "Hi"}, _reference("msg_x")]
    body = {"model": MODEL, "input": given}
    raw = json.dumps({"custom_id": "q1", "method": "POST", "url": RESPONSES_ENDPOINT, "body": body})
    with pytest.raises(LlmqError, match="'item_reference' are not served in a batch") as caught:
        read_line(
            raw.encode(),
            tenant=DEFAULT_TENANT,
            catalog=Catalog.builtin(),
            deadline=time.time() + 60,
            correlation_id="batch_ab.1.0",
            endpoint=RESPONSES_ENDPOINT,
        )
    assert caught.value.code is ErrorCode.UNSUPPORTED
