"""The front door's refusals before any route connects, in OpenAI's error shape: a path llmq
does not offer, a method a route does not take, a query parameter of the wrong type, a caller
without a key (before anything else of its request is read), an upload past the file limit
or a JSON body past its bound (before either is read whole), a body that is not JSON; and
Redis out of reach where a route needs it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from redis.exceptions import AuthenticationError
from starlette.types import Message

from gateway import door as front_door
from gateway.app import SERVED, build
from gateway.batch import routes
from gateway.batch.store import TOO_LARGE
from gateway.settings import GatewaySettings
from schemas.catalog import Catalog
from schemas.tenants import TenantPolicy, key_hash, new_key
from tests.unit.asgi import post_scope, replied

KEY = new_key()
MULTIPART = "multipart/form-data; boundary=b"
FILE_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'


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
    response = door.post("/v1/embeddings", json={"model": "m", "input": "Hi"})
    assert response.status_code == 404
    message = _error(response.json())["message"]
    assert message == f"the front door serves no POST /v1/embeddings; it serves {SERVED}"
    assert "/v1/completions" in SERVED


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


@pytest.fixture(scope="module")
def keyed() -> FastAPI:
    """The app of a front door with a key (tenant acme), without its lifespan."""
    policy = TenantPolicy.model_validate({"api_keys": {key_hash(KEY): "acme"}})
    return build(GatewaySettings(), Catalog.builtin(), policy)


def _send(
    app: FastAPI, path: str, headers: dict[str, str], chunks: int, first: bytes = FILE_PART
) -> tuple[int, Any, int]:
    """POST `first` (a file part's head) and then 4 KiB chunks, `chunks` in all, to `path`,
    straight through ASGI: the status, the JSON body and how many chunks the app read."""
    sent: list[Message] = []
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        body = first if read == 1 else b"x" * 4096
        return {"type": "http.request", "body": body, "more_body": read < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(post_scope(app, path, headers), receive, send))
    status, body = replied(sent)
    return status, json.loads(body), read


def test_a_caller_without_a_key_is_refused_before_its_query_is_read(keyed: FastAPI) -> None:
    client = TestClient(keyed, raise_server_exceptions=False)
    refused = client.get("/v1/files", params={"limit": "many"})
    assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
    keyed_get = client.get("/v1/files", params={"limit": "many"}, headers=_bearer())
    assert keyed_get.status_code == 400
    assert keyed_get.json()["error"]["message"].startswith("limit (query): ")


def test_an_upload_without_a_key_is_refused_unread(keyed: FastAPI) -> None:
    status, body, read = _send(keyed, "/v1/files", {"content-type": MULTIPART}, chunks=64)
    assert (status, read) == (401, 0), body
    assert body["error"]["message"] == "no API key: send Authorization: Bearer KEY"


def test_an_upload_declared_past_the_limit_is_refused_unread(keyed: FastAPI) -> None:
    declared = str(routes.MAX_UPLOAD_BYTES + 1)
    headers = {"content-type": MULTIPART, "content-length": declared, **_bearer()}
    status, body, read = _send(keyed, "/v1/files", headers, chunks=64)
    assert (status, body["error"]["message"], read) == (400, TOO_LARGE, 0)


def test_an_upload_growing_past_the_limit_is_refused_as_it_comes(
    keyed: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunked, no length declared: refused at the first chunk past the limit, not spooled whole."""
    monkeypatch.setattr(routes, "MAX_UPLOAD_BYTES", 10 * 4096)
    status, body, read = _send(keyed, "/v1/files", {"content-type": MULTIPART, **_bearer()}, 64)
    assert (status, body["error"]["message"], read) == (400, TOO_LARGE, 11)


def test_an_upload_that_is_not_a_multipart_form_says_how_to_send_it(keyed: FastAPI) -> None:
    headers = {"content-type": "application/json", **_bearer()}
    status, body, read = _send(keyed, "/v1/files", headers, chunks=1)
    assert status == 400 and read == 0
    assert body["error"]["message"] == (
        "send the file as multipart/form-data, with the fields file and purpose"
    )


def test_a_form_without_a_file_says_how_to_send_one(keyed: FastAPI) -> None:
    purpose_only = (
        b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'
    )
    headers = {"content-type": MULTIPART, **_bearer()}
    status, body, _ = _send(keyed, "/v1/files", headers, 1, first=purpose_only)
    assert (status, body["error"]["message"]) == (
        400,
        "no file: send it as the multipart field `file`",
    )


def test_a_json_body_past_its_bound_is_refused_unread_or_as_it_comes(
    keyed: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    why = f"the body is larger than {front_door.MAX_JSON_BYTES} bytes"
    declared = {"content-length": str(front_door.MAX_JSON_BYTES + 1), **_bearer()}
    status, body, read = _send(keyed, "/v1/chat/completions", declared, 64, first=b"{")
    assert (status, body["error"]["message"], read) == (413, why, 0)
    assert body["error"]["type"] == "invalid_request_error"
    monkeypatch.setattr(front_door, "MAX_JSON_BYTES", 10 * 4096)
    status, body, read = _send(keyed, "/v1/batches", _bearer(), 64, first=b"{")
    assert (status, read) == (413, 11) and "larger than 40960 bytes" in body["error"]["message"]


def test_a_body_that_is_not_json_is_a_400_saying_so(keyed: FastAPI) -> None:
    status, body, read = _send(keyed, "/v1/chat/completions", _bearer(), 2, first=b"{")
    assert (status, body["error"]["code"], read) == (400, "invalid_json", 2)
    assert body["error"]["message"].startswith("the body is not JSON: ")


def test_a_body_nested_too_deeply_is_a_400_not_a_500(keyed: FastAPI) -> None:
    """json's RecursionError is no ValueError: a few kB a thousand deep were a 500, with a
    traceback logged, which the SDK sent twice more."""
    deep = b'{"metadata": {"a": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    status, body, _ = _send(keyed, "/v1/chat/completions", _bearer(), 1, first=deep)
    assert (status, body["error"]["code"]) == (400, "invalid_json")
    assert body["error"]["message"] == "the body's JSON is nested too deeply"


def test_every_answer_carries_a_request_id_as_openais_do() -> None:
    """The SDK keeps it (an error's `request_id`): refusals before any body is read, and a
    failure answered outside the app's middleware, have one of their own."""
    app = build(GatewaySettings(), Catalog.builtin(), TenantPolicy.load(None))

    async def broken() -> None:
        raise RuntimeError("a bug")

    async def routed() -> JSONResponse:
        return JSONResponse({}, headers={"X-Request-Id": "c-1"})  # as a route sets its own

    app.add_api_route("/broken", broken)
    app.add_api_route("/routed", routed)
    client = TestClient(app, raise_server_exceptions=False)
    answers = [
        client.post("/v1/embeddings", json={}),
        client.get("/v1/chat/completions"),
        client.get("/v1/batches", params={"limit": "many"}),
        client.get("/broken"),
    ]
    assert [a.status_code for a in answers] == [404, 405, 400, 500]
    ids = {a.headers.get("x-request-id", "") for a in answers}
    assert len(ids) == 4 and all(i.startswith("req_") for i in ids)
    assert client.get("/routed").headers.get_list("x-request-id") == ["c-1"]


def test_redis_out_of_reach_is_a_503_naming_it_which_the_sdk_retries() -> None:
    settings = GatewaySettings(redis_url="redis://127.0.0.1:1/0")
    app = build(settings, Catalog.builtin(), TenantPolicy.load(None))

    async def refused() -> None:
        raise AuthenticationError("invalid username-password pair")

    app.add_api_route("/refused", refused)
    away = TestClient(app, raise_server_exceptions=False)
    wrong = away.get("/refused")  # a refusal, not out of reach: retrying would not mend it
    assert wrong.status_code == 500
    assert wrong.json()["error"]["message"].startswith("the front door failed: ")
    asked = [
        away.get("/v1/responses/resp_1"),
        away.delete("/v1/responses/resp_1"),
        away.post("/v1/responses", json={"input": "Hi", "previous_response_id": "resp_1"}),
        away.get("/v1/batches/batch_1"),
    ]
    for answer in asked:
        error = answer.json()["error"]
        assert (answer.status_code, error["type"], error["code"]) == (
            503,
            "server_error",
            "internal_error",
        )
        assert error["message"].startswith("Redis, where the front door keeps responses")
        assert "x-should-retry" not in answer.headers


def _bearer() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"}
