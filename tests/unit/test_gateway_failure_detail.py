"""A failure's detail goes to the front door's log, not to its client: Redis out of reach
names its host and port, any other exception may name a host or a path."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from gateway.app import build
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy


def test_redis_out_of_reach_is_answered_without_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0")
    door = TestClient(build(settings, Catalog.builtin(), TenantPolicy.load(None)))
    with caplog.at_level(logging.WARNING, logger="gateway.app"):
        answer = door.get("/v1/batches/batch_1")
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (503, "internal_error")
    assert answer.headers["retry-after"] == "5"  # the SDK waits it before it tries again
    assert error["message"] == (
        "Redis, where the front door keeps responses, results and batches, is out of reach;"
        " try again"
    )
    assert "127.0.0.1:1" not in answer.text
    assert "127.0.0.1:1" in caplog.text  # where an operator looks


def test_a_failure_is_answered_by_its_kind_and_logged_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))

    async def broken() -> None:
        raise OSError("cannot reach db.internal:5432 from /etc/llmq/secret.toml")

    app.add_api_route("/broken", broken)
    with caplog.at_level(logging.ERROR, logger="gateway.app"):
        answer = TestClient(app, raise_server_exceptions=False).get("/broken")
    assert answer.status_code == 500
    assert answer.json()["error"]["message"] == "the front door failed: OSError"
    assert "db.internal" not in answer.text
    assert f"request {answer.headers['x-request-id']} failed: OSError: cannot reach" in caplog.text
