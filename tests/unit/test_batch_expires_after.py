"""The expiry policies OpenAI's SDK sends, taken by the Batch API's routes: a file's
`expires_after` (multipart fields `expires_after[anchor]` and `expires_after[seconds]`) and a
batch's `output_expires_after` (JSON), each handed to the store, or refused with a 400 naming
it before anything is kept. The store is in memory; what it keeps how long on a real Redis is
tests/integration/test_batch_expiry_redis.py's."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from gateway.app import build
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy

pytestmark = pytest.mark.timeout(60)

FILE = "file-in"
HOUR, MONTH = 3600, 30 * 24 * 3600


class Store:
    """The batch store as the routes use it to upload and make batches: what they ask of it
    is kept in memory."""

    def __init__(self) -> None:
        self.uploads: list[int | None] = []
        """Each upload's `expires_after_s`."""
        self.batches: list[dict[str, str]] = []

    async def create_file(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        expires_after_s: int | None = None,
    ) -> dict[str, str]:
        size = sum([len(chunk) async for chunk in chunks])
        self.uploads.append(expires_after_s)
        now = int(time.time())
        return {
            "id": FILE,
            "tenant": tenant,
            "filename": filename,
            "purpose": purpose,
            "bytes": str(size),
            "created_at": str(now),
            "expires_at": str(now + (expires_after_s or MONTH)),
        }

    async def file(self, file_id: str, tenant: str) -> dict[str, str] | None:
        return {"id": FILE, "purpose": "batch", "lines": "1"} if file_id == FILE else None

    async def create_batch(self, fields: dict[str, str]) -> None:
        self.batches.append(fields)


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch, store: Store) -> OpenAI:
    """OpenAI's SDK against a front door (no lifespan: Redis is never reached)."""
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0")
    app = build(settings, Catalog.builtin(), TenantPolicy.load(None))
    monkeypatch.setattr(app.state.door, "batches", store)
    return OpenAI(
        api_key="k", base_url="http://testserver/v1", http_client=TestClient(app), max_retries=0
    )


def _upload(sdk: OpenAI, **asked: Any) -> Any:
    return sdk.files.create(file=("in.jsonl", io.BytesIO(b"{}\n")), purpose="batch", **asked)


def _batch(sdk: OpenAI, **asked: Any) -> Any:
    return sdk.batches.create(
        input_file_id=FILE, endpoint="/v1/chat/completions", completion_window="24h", **asked
    )


def test_an_upload_hands_the_store_the_seconds_its_expires_after_asks(
    sdk: OpenAI, store: Store
) -> None:
    kept = _upload(sdk, expires_after={"anchor": "created_at", "seconds": HOUR})
    assert kept.expires_at == kept.created_at + HOUR
    _upload(sdk)
    assert store.uploads == [HOUR, None]


def test_a_batch_keeps_the_seconds_its_output_expires_after_asks(sdk: OpenAI, store: Store) -> None:
    _batch(sdk, output_expires_after={"anchor": "created_at", "seconds": 2 * HOUR})
    _batch(sdk)
    assert [b.get("output_expires_after_s") for b in store.batches] == [str(2 * HOUR), None]


BAD: list[object] = [
    {"anchor": "last_active_at", "seconds": HOUR},
    {"anchor": "created_at", "seconds": HOUR - 1},
    {"anchor": "created_at", "seconds": MONTH + 1},
    {"anchor": "created_at", "seconds": 3600.5},
    {"anchor": "created_at"},
    {"seconds": HOUR},
    {"anchor": "created_at", "seconds": HOUR, "extra": 1},
]


@pytest.mark.parametrize("policy", BAD)
def test_an_upload_with_a_bad_expires_after_is_a_400_naming_it(
    sdk: OpenAI, store: Store, policy: object
) -> None:
    with pytest.raises(openai.BadRequestError, match="expires_after must be") as caught:
        _upload(sdk, expires_after=policy)
    assert (caught.value.code, caught.value.param) == ("invalid_request", "expires_after")
    assert store.uploads == []


def test_an_upload_with_expires_after_as_one_field_is_a_400_naming_it(
    sdk: OpenAI, store: Store
) -> None:
    """Not the SDK's encoding: refused, not ignored."""
    with pytest.raises(openai.BadRequestError, match="expires_after must be") as caught:
        _upload(sdk, extra_body={"expires_after": HOUR})
    assert caught.value.param == "expires_after"
    assert store.uploads == []


JSON_ONLY: list[object] = [
    {"anchor": "created_at", "seconds": "3600"},
    {"anchor": "created_at", "seconds": True},
    HOUR,
]
"""Bad in a JSON body only: a form's fields are all strings."""


@pytest.mark.parametrize("policy", [*BAD, *JSON_ONLY])
def test_a_batch_with_a_bad_output_expires_after_is_a_400_naming_it(
    sdk: OpenAI, store: Store, policy: object
) -> None:
    with pytest.raises(openai.BadRequestError, match="output_expires_after must be") as caught:
        _batch(sdk, output_expires_after=policy)
    assert (caught.value.code, caught.value.param) == ("invalid_request", "output_expires_after")
    assert store.batches == []
