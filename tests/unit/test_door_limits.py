"""The front door's refusals of what waiting cannot mend, and its waits: n choices that the
tenant's rate limits can never admit together (a 400 naming n, before anything is
published; they were 429s the SDK retried, each try draining the buckets), a 503
budget_unavailable with its Retry-After, and the key checked before input_items' query."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.app import build
from gateway.door import ApiError, FrontDoor
from gateway.openai import read_call
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.errors import ErrorCode, LlmqError
from schemas.request import InferenceRequest
from schemas.result import ErrorInfo, InferenceResult
from schemas.tenants import TenantPolicy, key_hash, new_key
from streams.ratelimit import RateLimiter

MODEL = Catalog.builtin().default
KEY = new_key()
LIMITS = {"requests_per_minute": 5, "tokens_per_minute": 1000}
"""A prompt of "Hi" (1 token) with max_tokens 300 is estimated at 301 tokens: 3 fit."""
BUSY = ErrorInfo.from_error(LlmqError(ErrorCode.BUDGET_UNAVAILABLE, "budget unreadable", 5))


class Client:
    """llmq's client as the routes use it: what was published, each answer `answer`."""

    def __init__(self, answer: ErrorInfo = BUSY) -> None:
        self.answer = answer
        self.submitted: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)

    async def result(self, correlation_id: str, wait_s: float, **_: Any) -> InferenceResult:
        return InferenceResult(correlation_id=correlation_id, status="error", error=self.answer)

    async def cancel(self, correlation_id: str, tenant: str | None = None) -> None:
        pass


class Workers:
    async def serves(self, models: object) -> bool:
        return True


def _app(monkeypatch: pytest.MonkeyPatch, client: Client) -> FastAPI:
    """The app without its lifespan, for a tenant (default: no keys) with LIMITS."""
    policy = TenantPolicy.model_validate({"default": LIMITS})
    app = build(GatewaySettings(), Catalog.builtin(), policy)
    monkeypatch.setattr(app.state.door, "client", client)
    monkeypatch.setattr(app.state.door, "serving", Workers())
    return app


def _refused_for_n(response: Any, limit: str) -> None:
    """A 400 naming n and the limit, that the SDK does not retry."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_request",
        "n",
        "invalid_request_error",
    )
    assert limit in error["message"]
    assert response.headers["x-should-retry"] == "false"
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}]}),
        ("/v1/completions", {"prompt": "Hi"}),
    ],
)
def test_more_choices_than_requests_per_minute_are_refused_unpublished(
    monkeypatch: pytest.MonkeyPatch, path: str, body: dict[str, Any]
) -> None:
    """Each try admitted 5 of 8 choices, sent them to the engines, and was a 429."""
    client = Client()
    http = TestClient(_app(monkeypatch, client), raise_server_exceptions=False)
    response = http.post(path, json={"model": MODEL, "n": 8, **body})
    _refused_for_n(response, "at most 5 requests per minute; ask for at most 5 choices")
    assert client.submitted == []


def test_choices_over_tokens_per_minute_together_are_refused_unpublished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = Client()
    http = TestClient(_app(monkeypatch, client), raise_server_exceptions=False)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 300}
    response = http.post("/v1/chat/completions", json={**body, "n": 4})
    _refused_for_n(response, "about 1204 tokens (301 each")
    assert "at most 1000 tokens per minute; ask for at most 3 choices" in response.text
    assert client.submitted == []


def _check(door: FrontDoor, n: int, max_tokens: int) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "n": n, "max_tokens": max_tokens}
    door.check_choices(
        read_call(body, tenant="acme", lane=None, catalog=door.catalog, timeout_s=60)
    )


def test_choices_the_limits_can_admit_together_pass_the_door(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Up to the limits; one choice over tokens_per_minute alone is left to admission, whose
    prompt_too_large says to shorten it (fewer choices would not help)."""
    door = _app(monkeypatch, Client()).state.door
    _check(door, 5, 16)
    _check(door, 3, 300)
    _check(door, 2, 2000)
    with pytest.raises(ApiError):
        _check(door, 6, 16)


def test_a_request_over_tokens_per_minute_is_no_context_length_exceeded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Admission's refusal of a request larger than the tenant's whole tokens bucket reached
    HTTP clients as OpenAI's context_length_exceeded: apps that trim the conversation on
    that code trimmed it and sent it again, refused again."""
    limits = TenantPolicy.model_validate({"default": LIMITS}).limits("default")

    async def admission() -> LlmqError:
        client: aioredis.Redis = aioredis.Redis(port=1)  # never reached: no wait would help
        try:
            await RateLimiter(client).check(
                "default", limits, 1201, request_id="c-1", fingerprint="fp"
            )
        except LlmqError as refused:
            return refused
        finally:
            await client.connection_pool.disconnect()
        raise AssertionError("admitted")

    refusal = ErrorInfo.from_error(asyncio.run(admission()))
    http = TestClient(_app(monkeypatch, Client(refusal)), raise_server_exceptions=False)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1200}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("invalid_request", "invalid_request_error")
    assert "at most 1000 tokens per minute (tokens_per_minute)" in error["message"]
    assert response.headers["x-should-retry"] == "false"


def test_a_tenant_without_limits_may_ask_for_every_choice() -> None:
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))
    _check(app.state.door, 16, 32_768)


def test_a_budget_unavailable_503_says_when_to_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK waits a Retry-After it is given; without one, its own backoff (under a second)."""
    http = TestClient(_app(monkeypatch, Client(BUSY)), raise_server_exceptions=False)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 503 and response.json()["error"]["code"] == "budget_unavailable"
    assert response.headers["retry-after"] == "5"
    assert "x-should-retry" not in response.headers
    late = ApiError(LlmqError(ErrorCode.BUDGET_UNAVAILABLE, "budget unreadable", 0.2))
    assert late.headers == {"Retry-After": "1"}


def test_input_items_without_a_key_is_a_401_before_its_query_is_validated() -> None:
    policy = TenantPolicy.model_validate({"api_keys": {key_hash(KEY): "acme"}})
    app = build(GatewaySettings(), Catalog.builtin(), policy)
    http = TestClient(app, raise_server_exceptions=False)
    path = "/v1/responses/resp_x/input_items"
    refused = http.get(path, params={"limit": "abc"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    keyed = http.get(path, params={"limit": "abc"}, headers={"authorization": f"Bearer {KEY}"})
    assert keyed.status_code == 400
    assert keyed.json()["error"]["message"].startswith("limit (query): ")
