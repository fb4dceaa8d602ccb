"""What the Batch API refuses before it reads Redis: a batch without its input file's id, and
settings that would let a batch's state expire while it runs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from gateway.app import build
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy


@pytest.mark.parametrize("file_id", [None, "", 7])
def test_a_batch_without_an_input_file_id_is_a_400_naming_it(file_id: object) -> None:
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0")  # never reached
    door = TestClient(build(settings, Catalog.builtin(), TenantPolicy.load(None)))
    asked = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}
    answer = door.post(
        "/v1/batches", json=asked | ({} if file_id is None else {"input_file_id": file_id})
    )
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_request")
    assert error["message"].startswith("input_file_id must be")


def test_batches_are_kept_at_least_their_window() -> None:
    with pytest.raises(ValidationError, match=r"LLMQ_BATCH_RETENTION_S \(3599\) is shorter than"):
        GatewaySettings(batch_window_s=3600, batch_retention_s=3599)
    assert GatewaySettings(batch_window_s=3600, batch_retention_s=3600).batch_retention_s == 3600
