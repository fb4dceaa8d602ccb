"""The front door's refusals of what no route serves, in OpenAI's error shape: a path llmq
does not offer, a method a route does not take, a query parameter of the wrong type."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import SERVED, build
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy


@pytest.fixture(scope="module")
def door() -> TestClient:
    """The app without its lifespan: these refusals come before any route connects."""
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))
    return TestClient(app, raise_server_exceptions=False)


def _error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_request"
    return error


def test_a_path_no_route_serves_is_named_with_the_ones_that_are(door: TestClient) -> None:
    response = door.post("/v1/completions", json={"model": "m", "prompt": "Hi"})
    assert response.status_code == 404
    message = _error(response.json())["message"]
    assert message == f"the front door serves no POST /v1/completions; it serves {SERVED}"


def test_a_method_a_route_does_not_take_names_the_one_it_does(door: TestClient) -> None:
    response = door.get("/v1/chat/completions")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert _error(response.json())["message"] == (
        "GET /v1/chat/completions is not served: /v1/chat/completions takes POST"
    )


def test_a_405_names_every_method_the_path_takes(door: TestClient) -> None:
    response = door.put("/v1/files/file-1")  # GET and DELETE: two routes of one path
    assert response.status_code == 405 and response.headers["allow"] == "DELETE, GET"
    assert _error(response.json())["message"].endswith("/v1/files/file-1 takes DELETE, GET")


def test_a_query_parameter_of_the_wrong_type_is_a_400_without_its_value(
    door: TestClient,
) -> None:
    response = door.get("/v1/files", params={"limit": "lots-of-secret"})
    assert response.status_code == 400
    message = _error(response.json())["message"]
    assert isinstance(message, str) and message.startswith("limit (query): ")
    assert "lots-of-secret" not in message
