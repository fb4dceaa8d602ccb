"""The front door as OpenAI's SDK meets it, with fakes for llmq's client, the workers and the
response store: OpenAI's error codes for the conditions apps branch on, the fields a refusal
names as the app wrote them, and what the door accepts as OpenAI does (top_p 0, the prompt
cache's options, a predicted output, the default verbosity) or bounds as OpenAI does
(metadata)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from gateway.app import build
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import InferenceRequest
from schemas.result import ErrorInfo, InferenceResult
from schemas.tenants import TenantPolicy

MODEL = Catalog.builtin().default
ASK = [{"role": "user", "content": "Hi"}]
CODES = ("/v1/chat/completions", "/v1/responses")


class Client:
    """llmq's client as the routes use it: each request is kept, and answered with
    `error`."""

    def __init__(self, error: LlmqError) -> None:
        self.error = error
        self.requests: list[InferenceRequest] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.requests.append(request)

    async def result(self, correlation_id: str, wait_s: float, tenant: str) -> InferenceResult:
        return InferenceResult(
            correlation_id=correlation_id,
            tenant=tenant,
            status="error",
            error=ErrorInfo.from_error(self.error),
        )

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        pass


class Workers:
    async def serves(self, models: object) -> bool:
        return True


def _door(
    monkeypatch: pytest.MonkeyPatch, error: LlmqError | None = None
) -> tuple[TestClient, OpenAI, Client]:
    """A door whose requests are answered with `error` (by default, the context overflow
    a worker answers), its HTTP client, the SDK on it, and its llmq client."""
    error = error or LlmqError(ErrorCode.PROMPT_TOO_LARGE, "the prompt is 9000 tokens")
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))
    client = Client(error)
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    http = TestClient(app)
    return http, OpenAI(api_key="k", base_url="http://testserver/v1", http_client=http), client


def _body(path: str, **fields: Any) -> dict[str, Any]:
    asked = {"messages": ASK} if path == "/v1/chat/completions" else {"input": "Hi"}
    return {"model": MODEL, **asked, **fields}


@pytest.mark.parametrize("path", CODES)
def test_a_context_overflow_and_an_unknown_model_carry_openais_codes(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Apps branch on context_length_exceeded (to cut the prompt) and model_not_found; llmq's
    prompt_too_large and unknown_model stay in its own records (the stored result)."""
    http, _, _ = _door(monkeypatch)
    overflow = http.post(path, json=_body(path))
    assert overflow.status_code == 400
    assert overflow.json()["error"]["code"] == "context_length_exceeded"
    assert overflow.json()["error"]["type"] == "invalid_request_error"
    unknown = http.post(path, json=_body(path, model="gpt-4o"))
    assert unknown.status_code == 404
    assert (unknown.json()["error"]["code"], unknown.json()["error"]["param"]) == (
        "model_not_found",
        "model",
    )


def test_the_sdk_reads_openais_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    _, sdk, _ = _door(monkeypatch)
    with pytest.raises(openai.BadRequestError) as overflow:
        sdk.chat.completions.create(model=MODEL, messages=ASK)  # type: ignore[arg-type]
    assert overflow.value.code == "context_length_exceeded"
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.models.retrieve("gpt-4o")
    assert unknown.value.code == "model_not_found"


def test_a_refusal_names_max_completion_tokens_where_the_app_wrote_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """It named max_tokens, a field the app had not sent (the door reads the newer name as
    it)."""
    _, sdk, _ = _door(monkeypatch)
    with pytest.raises(openai.BadRequestError) as past:
        sdk.chat.completions.create(model=MODEL, messages=ASK, max_completion_tokens=40_000)  # type: ignore[arg-type]
    assert past.value.param == "max_completion_tokens"
    assert "max_completion_tokens: " in past.value.message
    assert "max_tokens" not in past.value.message
    with pytest.raises(openai.BadRequestError) as under:
        sdk.chat.completions.create(
            model=MODEL,
            messages=ASK,  # type: ignore[arg-type]
            max_completion_tokens=8,
            extra_body={"min_tokens": 16},
        )
    assert under.value.param == "min_tokens"
    assert "min_tokens (16) is more than max_completion_tokens (8)" in under.value.message
    assert "max_tokens" not in under.value.message


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "ping", "parameters": {}}}],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
    ],
)
def test_a_field_checked_against_another_is_named_in_param(
    fields: dict[str, Any], param: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They were refusals of the whole body: param null, pydantic's "Value error," in the
    message."""
    http, _, _ = _door(monkeypatch)
    refused = http.post("/v1/chat/completions", json=_body("/v1/chat/completions", **fields))
    error = refused.json()["error"]
    assert (refused.status_code, error["param"]) == (400, param)
    assert error["message"].startswith(f"{param}: ") and "Value error" not in error["message"]


@pytest.mark.parametrize("path", CODES)
def test_top_p_zero_is_served_as_the_greedy_request(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenAI takes 0 to 1; vLLM refuses 0, the likeliest token only: greedy decoding."""
    http, _, client = _door(monkeypatch)
    http.post(path, json=_body(path, top_p=0, temperature=0.7))
    http.post(path, json=_body(path, temperature=0))
    zero, greedy = (request.body for request in client.requests)
    assert zero == greedy and zero.deterministic


@pytest.mark.parametrize("path", CODES)
def test_the_prompt_caches_options_are_accepted_and_ignored(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As prompt_cache_key is (vLLM's prefix cache keeps what its memory holds); each of
    its type."""
    http, _, client = _door(monkeypatch)
    options = {"prompt_cache_retention": "24h", "prompt_cache_options": {"ttl": "30m"}}
    http.post(path, json=_body(path, **options))
    http.post(path, json=_body(path))
    with_options, plain = (request.body for request in client.requests)
    assert with_options == plain
    for name in options:
        refused = http.post(path, json=_body(path, **{name: 5})).json()["error"]
        assert (refused["code"], refused["param"]) == ("invalid_request", name)


def test_a_predicted_output_is_accepted_and_ignored_on_chat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A speed-up of OpenAI's: the answer is the same without it. Chat's own field."""
    http, _, client = _door(monkeypatch)
    prediction = {"type": "content", "content": "Hello"}
    path = "/v1/chat/completions"
    http.post(path, json=_body(path, prediction=prediction))
    http.post(path, json=_body(path))
    predicted, plain = (request.body for request in client.requests)
    assert predicted == plain
    refused = http.post(path, json=_body(path, prediction="Hello")).json()["error"]
    assert refused["param"] == "prediction"
    on_responses = http.post("/v1/responses", json=_body("/v1/responses", prediction=prediction))
    assert on_responses.json()["error"]["code"] == "unsupported"


@pytest.mark.parametrize(
    ("path", "refused", "param", "served"),
    [
        ("/v1/chat/completions", {"verbosity": "low"}, "verbosity", {"verbosity": "medium"}),
        ("/v1/responses", {"text": {"verbosity": "low"}}, "text.verbosity", {"text": {}}),
        (
            "/v1/responses",
            {"text": {"format": {"type": "text"}, "verbosity": "high"}},
            "text.verbosity",
            {"text": {"verbosity": "medium"}},
        ),
    ],
)
def test_a_verbosity_but_the_default_is_refused_on_both_apis(
    path: str,
    refused: dict[str, Any],
    param: str,
    served: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Responses dropped it unread; chat refused the field by name, whatever its value."""
    http, _, client = _door(monkeypatch)
    answer = http.post(path, json=_body(path, **refused))
    error = answer.json()["error"]
    assert (answer.status_code, error["code"], error["param"]) == (400, "unsupported", param)
    assert "'medium'" in error["message"] and not client.requests
    http.post(path, json=_body(path, **served))
    assert len(client.requests) == 1


@pytest.mark.parametrize("path", CODES)
@pytest.mark.parametrize(
    "metadata",
    [
        {f"k{i}": "v" for i in range(17)},
        {"k" * 65: "v"},
        {"k": "v" * 513},
        {"k": 1},
    ],
)
def test_metadata_is_held_to_openais_bounds(
    path: str, metadata: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 pairs, keys to 64 characters, values to 512, as on the Batch API: a response
    echoes its metadata, and stores it, so an unbounded one was kept for 30 days."""
    http, _, client = _door(monkeypatch)
    refused = http.post(path, json=_body(path, metadata=metadata))
    error = refused.json()["error"]
    assert (refused.status_code, error["code"], error["param"]) == (
        400,
        "invalid_request",
        "metadata",
    )
    at_the_bounds = {f"{i:02}" + "k" * 62: "v" * 512 for i in range(16)}
    http.post(path, json=_body(path, metadata=at_the_bounds))
    assert len(client.requests) == 1


def test_the_batch_route_holds_metadata_to_the_same_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One check for the three routes (the Batch API's was its own)."""
    http, _, _ = _door(monkeypatch)
    batch = {"input_file_id": "file-1", "endpoint": "/v1/chat/completions"}
    refused = http.post(
        "/v1/batches",
        json={**batch, "completion_window": "24h", "metadata": {"k": "v" * 513}},
    )
    error = refused.json()["error"]
    assert (refused.status_code, error["param"]) == (400, "metadata")
    assert error["message"] == "metadata keys are strings to 64 characters, values to 512"
