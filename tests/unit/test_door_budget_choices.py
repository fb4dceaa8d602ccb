"""The front door's refusal of n choices whose holds the tenant's budget can never take
together: each choice is a request that holds its worst case at admission, so those past the
budget were told to wait 5 s for requests in flight (their own siblings, cancelled with the
429), on every try. A 400 naming n now, before anything is published."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.app import build
from gateway.door import ApiError, FrontDoor
from gateway.openai import read_call
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.request import InferenceRequest
from schemas.tenants import TenantPolicy

PRICED = Catalog.model_validate(
    {
        "default": "dear",
        "models": [
            {
                "name": "dear",
                "source": "/m/dear",
                "tier": 2,
                "fallback": ["cheap"],
                "price_completion_per_mtok": 1000.0,  # max_tokens 300: $0.30
            },
            {
                "name": "cheap",
                "source": "/m/cheap",
                "price_completion_per_mtok": 500.0,  # max_tokens 300: $0.15
            },
            {"name": "alone", "source": "/m/alone", "price_completion_per_mtok": 1000.0},
        ],
    }
)
"""Prompts cost nothing, so that a choice's worst case is max_tokens at its model's price."""


class Client:
    """llmq's client as the routes use it: what was published."""

    def __init__(self) -> None:
        self.submitted: list[str] = []

    async def submit_request(self, request: InferenceRequest) -> None:
        self.submitted.append(request.correlation_id)


def _app(budget: float) -> FastAPI:
    """The app without its lifespan, for a tenant (default: no keys) with `budget` a day."""
    policy = TenantPolicy.model_validate({"default": {"budget_usd": budget}})
    return build(GatewaySettings(), PRICED, policy)


def _door(budget: float) -> FrontDoor:
    door: FrontDoor = _app(budget).state.door
    return door


def _check(door: FrontDoor, model: str, n: int, max_tokens: int = 300) -> None:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "n": n,
        "max_tokens": max_tokens,
    }
    door.check_choices(read_call(body, tenant="acme", lane=None, catalog=PRICED, timeout_s=60))


def test_choices_whose_holds_the_budget_never_takes_together_are_refused_unpublished(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 choices of $0.30 on an idle $1 budget: 3 were held, the 4th told to wait 5 s."""
    client = Client()
    app = _app(1.0)
    monkeypatch.setattr(app.state.door, "client", client)
    http = TestClient(app, raise_server_exceptions=False)
    ask = {"model": "alone", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 300}
    response = http.post("/v1/chat/completions", json={**ask, "n": 4})
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", "n")
    assert error["message"] == (
        "n is 4: each choice is a request that holds at least $0.3 (its prompt and max_tokens "
        "at the model's prices) of tenant default's $1.00 budget a day until it is answered, "
        "so 4 never fit together; ask for at most 3 choices or lower max_tokens"
    )
    assert response.headers["x-should-retry"] == "false"
    assert client.submitted == []


def test_choices_that_fit_an_idle_budget_pass_the_door_summed_as_admission_sums_holds() -> None:
    """In whole nano-dollars: 3 x $0.1 is $0.3 there, more in floating point."""
    _check(_door(1.0), "alone", 3)
    _check(_door(0.3), "alone", 3, max_tokens=100)
    with pytest.raises(ApiError, match="ask for at most 3 choices"):
        _check(_door(0.3), "alone", 4, max_tokens=100)


def test_the_door_holds_a_choice_to_the_cheapest_model_that_may_serve_it() -> None:
    """Its route is the stream processor's: a fallback or an "auto" tier may serve it for
    less, so the door refuses only what no route fits."""
    door = _door(1.0)
    _check(door, "dear", 4)  # $0.15 on its fallback
    _check(door, "auto", 4)
    with pytest.raises(ApiError, match=r"at least \$0.15 .* ask for at most 6 choices"):
        _check(door, "dear", 7)


def test_one_choice_over_the_budget_or_a_suspended_tenant_is_left_to_admission() -> None:
    """Fewer choices would not help: admission says to lower max_tokens, or that the tenant
    is suspended."""
    _check(_door(0.2), "alone", 4)
    _check(_door(0.0), "alone", 4)
