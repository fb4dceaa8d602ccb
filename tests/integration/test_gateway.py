"""The HTTP front door on the real stack, driven by the real OpenAI SDK (and curl, httpx):
completions, streams, each error, keys, a client that leaves, coalesced and resumed streams,
two instances, and the Kafka app's stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from llmq.aio import AsyncClient
from llmq.client import tail
from llmq.streaming import Delta
from schemas.metering import MeteringEvent
from schemas.names import METERING, TOKENS
from schemas.result import InferenceResult
from schemas.settings import ServiceSettings
from schemas.stream import TokenDelta
from schemas.tenants import key_hash, new_key
from tests.integration.helpers import collect, metric, stored_result, unique_prompt
from tools.faults.rig import wait_until
from tools.stack.ports import free_block
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MODEL = "smollm2-135m"
KEYS = {"acme": new_key(), "suspended": new_key()}


@pytest.fixture(scope="module")
def keyed_door(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second front-door instance with API keys, a model no worker serves, and a 30 s
    deadline for every request: ample for a few tokens on a busy machine."""
    folder = tmp_path_factory.mktemp("keyed-door")
    tenants = folder / "tenants.toml"
    lines = [f'"{key_hash(key)}" = "{tenant}"' for tenant, key in KEYS.items()]
    tenants.write_text("[api_keys]\n" + "\n".join(lines) + "\n")
    assert stack.settings.models_file is not None
    models = folder / "models.toml"
    nobody = '\n[[models]]\nname = "nobody"\nengine = "openai"\nurl = "http://127.0.0.1:9/v1"\n'
    models.write_text(Path(stack.settings.models_file).read_text() + nobody)
    port = free_block(1)
    env = {
        "LLMQ_TENANTS_FILE": str(tenants),
        "LLMQ_MODELS_FILE": str(models),
        "LLMQ_REQUEST_TIMEOUT_S": "30",
    }
    component = stack.gateway(port, "gateway-keyed", env)
    stack.start(component, say=lambda _: None)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        component.proc.stop()


@pytest.fixture(scope="module")
def keyed(keyed_door: str) -> Iterator[dict[str | None, OpenAI]]:
    """An SDK client of the keyed door per tenant (None: with a key it does not know)."""
    keys: dict[str | None, str] = {None: "llmq-not-a-key"}
    keys.update(KEYS)
    clients = {
        tenant: OpenAI(base_url=keyed_door, api_key=key, max_retries=0, timeout=60)
        for tenant, key in keys.items()
    }
    yield clients
    for client in clients.values():
        client.close()


def test_a_completion_through_the_openai_sdk(sdk: OpenAI, door: str) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": unique_prompt("What is the capital of France?")}],
        max_tokens=12,
        temperature=0,
        top_p=None,  # the SDK sends an explicit None as null, as apps pass unset options
        seed=None,
        presence_penalty=None,
        extra_body={"ignore_eos": True},  # a whole generation, whenever the model would stop
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.model == MODEL
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content is not None
    assert choice.finish_reason == "length"
    assert answer.usage is not None and answer.usage.completion_tokens == 12
    details = answer.usage.prompt_tokens_details  # vLLM's prefix-cache hits, as OpenAI's
    assert details is not None and details.cached_tokens is not None
    extras = answer.model_extra or {}
    assert extras["llmq"]["cache"] == "none" and extras["llmq"]["model_used"] == MODEL
    cid = raw.headers["x-llmq-correlation-id"]
    assert answer.id == f"chatcmpl-{cid}" and answer._request_id == cid
    assert stored_result(door, cid).text == answer.choices[0].message.content


def test_a_stream_joins_to_the_answer_and_ends_with_its_usage(
    sdk: OpenAI, door: str, service_settings: ServiceSettings
) -> None:
    tokens = tail(service_settings.kafka_bootstrap, TOKENS)
    try:
        chunks = list(
            sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": unique_prompt()}],
                max_tokens=24,
                temperature=0,
                extra_body={"ignore_eos": True},
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        cid = chunks[0].id.removeprefix("chatcmpl-")
        published = collect(
            tokens,
            lambda rs: any(TokenDelta.model_validate_json(r.value).finish_reason for r in rs),
            30,
        )
    finally:
        tokens.close()
    assert chunks[0].choices[0].delta.role == "assistant"
    *pieces, finish, usage = chunks
    assert finish.choices[0].finish_reason == "length"
    assert usage.choices == [] and usage.usage is not None
    assert usage.usage.completion_tokens == 24
    text = "".join(c.choices[0].delta.content or "" for c in pieces)
    assert text == stored_result(door, cid).text
    # It came through llmq.tokens, a few tokens a record, the last with the usage.
    deltas = [TokenDelta.model_validate_json(r.value) for r in published]
    mine = [d for d in deltas if d.correlation_id == cid]
    assert mine and "".join(d.text for d in mine) == text
    assert sum(d.tokens for d in mine) == 24 and mine[-1].usage is not None


def test_a_cached_answer_streams_too(sdk: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": unique_prompt("Name a colour.")}
    ]
    whole = sdk.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0)
    chunks = list(
        sdk.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=8, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason is not None


def test_curl_shows_the_raw_events(door: str) -> None:
    body = (
        f'{{"model": "{MODEL}", "stream": true, "max_tokens": 6, "temperature": 0,'
        f' "messages": [{{"role": "user", "content": "{unique_prompt("Say hi.")}"}}]}}'
    )
    done = subprocess.run(
        [
            "curl",
            "-sN",
            f"{door}/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # Blank lines (keep-alives, past 15 s without a piece) are no events.
    events = [e.strip("\n") for e in done.stdout.split("\n\n") if e.strip()]
    assert all(e.startswith("data: ") and "\n" not in e for e in events)  # as OpenAI's: no ids
    assert '"role":"assistant"' in events[0] and events[-1] == "data: [DONE]"
    assert '"finish_reason":"' in events[-2]


def test_errors_reach_the_sdk_as_its_exceptions(
    sdk: OpenAI, keyed: dict[str | None, OpenAI], stack: LocalStack
) -> None:
    ask: dict[str, Any] = {
        "messages": [{"role": "user", "content": unique_prompt("Hi")}],
        "max_tokens": 4,
    }
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model=MODEL, **{**ask, "max_tokens": 0})
    assert "max_tokens" in bad.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.chat.completions.create(model="gpt-4o", **ask)
    assert "gpt-4o" in unknown.value.message
    with pytest.raises(openai.AuthenticationError):
        keyed[None].chat.completions.create(model=MODEL, **ask)
    with pytest.raises(openai.RateLimitError) as broke:
        keyed["suspended"].chat.completions.create(model=MODEL, **ask)
    assert broke.value.code == "budget_exceeded" and "is suspended" in broke.value.message
    assert "retry-after" not in broke.value.response.headers  # no wait helps
    with pytest.raises(openai.InternalServerError) as idle:
        keyed["acme"].chat.completions.create(model="nobody", **ask)
    assert idle.value.status_code == 503 and "no worker serves nobody" in idle.value.message
    with pytest.raises(openai.InternalServerError) as failed:
        sdk.chat.completions.create(model="dead-end", **ask)
    assert failed.value.status_code == 502 and failed.value.code == "engine_error"
    assert failed.value.request_id == failed.value.response.headers["x-llmq-correlation-id"]
    huge = [{"role": "user", "content": "\N{GRINNING FACE}" * 190_000}] * 2  # 1.5 MB as UTF-8
    with pytest.raises(openai.BadRequestError) as large:  # within the prompt's characters
        sdk.chat.completions.create(model=MODEL, messages=huge, max_tokens=4)  # type: ignore[arg-type]
    assert (
        large.value.code == "context_length_exceeded"
        and "the limit is 450000" in large.value.message
    )
    # The keyed door's 30 s deadline passes while the model's worker is stopped: no answer.
    worker = next(c.proc for c in stack.components() if c.proc.name == f"worker-{MODEL}")
    pid = worker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(openai.APIStatusError) as late:
            fresh = [{"role": "user", "content": unique_prompt("Hi")}]
            keyed["acme"].chat.completions.create(model=MODEL, messages=fresh, max_tokens=4)  # type: ignore[arg-type]
    finally:
        os.kill(pid, signal.SIGCONT)
    assert late.value.status_code == 408 and late.value.code == "expired"


def test_the_sdk_lists_and_retrieves_the_models(
    sdk: OpenAI, keyed: dict[str | None, OpenAI]
) -> None:
    listed = [m.id for m in sdk.models.list()]
    assert MODEL in listed and "auto" in listed
    assert sdk.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as unknown:
        sdk.models.retrieve("openai/gpt-4o")  # a name with a slash reaches the route too
    assert unknown.value.code == "model_not_found" and "'openai/gpt-4o'" in unknown.value.message
    assert keyed["acme"].models.retrieve("nobody").owned_by == "llmq"
    for ask in (keyed[None].models.list, lambda: keyed[None].models.retrieve(MODEL)):
        with pytest.raises(openai.AuthenticationError):
            ask()


def test_an_endpoint_llmq_does_not_serve_is_a_not_found_naming_those_it_does(sdk: OpenAI) -> None:
    """OpenAI's embeddings: the SDK's NotFoundError, with OpenAI's error body (not the
    router's {"detail": ...}) naming the paths the front door serves."""
    with pytest.raises(openai.NotFoundError) as embeddings:
        sdk.embeddings.create(model=MODEL, input="Hi")
    assert embeddings.value.code == "invalid_request"
    assert "serves no POST /v1/embeddings; it serves /v1/chat/completions, /v1/completions" in (
        embeddings.value.message
    )


def test_the_tenant_comes_from_the_key_never_the_body(
    keyed: dict[str | None, OpenAI], keyed_door: str, door: str
) -> None:
    acme = keyed["acme"]
    ask: dict[str, Any] = {
        "messages": [{"role": "user", "content": unique_prompt("Hi")}],
        "max_tokens": 4,
    }
    with pytest.raises(openai.BadRequestError) as claimed:
        acme.chat.completions.create(model=MODEL, **ask, extra_body={"tenant": "suspended"})
    assert "tenant" in claimed.value.message
    raw = acme.chat.completions.with_raw_response.create(model=MODEL, **ask)
    cid = raw.headers["x-llmq-correlation-id"]
    assert stored_result(keyed_door, cid, KEYS["acme"]).tenant == "acme"
    assert httpx.get(f"{door}/results/{cid}").status_code == 404  # tenant default's view


def test_a_client_that_leaves_cancels_its_generation(
    stack: LocalStack, sdk: OpenAI, door: str, service_settings: ServiceSettings
) -> None:
    port = stack.settings.metrics_base_port + 1  # the vLLM worker of smollm2-135m
    before = metric(port, "llmq_worker_generations_total", outcome="cancelled")
    metering = tail(service_settings.kafka_bootstrap, METERING)
    try:
        stream = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": unique_prompt()}],
            max_tokens=2000,  # near the model's 2048: far longer than a cancel takes
            temperature=0,
            extra_body={"ignore_eos": True},
            stream=True,
        )
        cid = next(iter(stream)).id.removeprefix("chatcmpl-")
        stream.close()  # the client goes away mid-answer
        deadline = time.monotonic() + 60
        while metric(port, "llmq_worker_generations_total", outcome="cancelled") == before:
            assert time.monotonic() < deadline, "the generation was not aborted"
            time.sleep(0.25)
        events = collect(
            metering, lambda rs: any(cid.encode() in r.value for r in rs), timeout_s=30
        )
    finally:
        metering.close()
    result = stored_result(door, cid)
    assert result.error is not None and result.error.code.value == "cancelled"
    [event] = [
        MeteringEvent.model_validate_json(r.value) for r in events if cid.encode() in r.value
    ]
    assert event.outcome == "cancelled" and 0 < event.completion_tokens < 2000


def test_a_copy_of_a_streaming_request_gets_the_whole_stream(
    stack: LocalStack, sdk: OpenAI, door: str
) -> None:
    port = stack.settings.metrics_base_port + 1
    before = metric(port, "llmq_worker_generations_total", outcome="ok")
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": unique_prompt()}],
        "max_tokens": 400,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
        "stream": True,
    }
    leader = iter(sdk.chat.completions.create(**ask))
    first = [next(leader), next(leader)]  # its generation runs: 400 tokens take a while
    copy = list(sdk.chat.completions.create(**ask))  # joins it, from the start
    rest = list(leader)

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(copy) == text(first + rest)
    assert copy[-1].choices[0].finish_reason == "length"
    # It followed the leader's generation, not the cache the leader left behind.
    assert stored_result(door, copy[0].id.removeprefix("chatcmpl-")).cache.value == "coalesced"

    # One generation for both: the worker counts it once it has published the answer.
    def generations() -> float:
        return metric(port, "llmq_worker_generations_total", outcome="ok")

    assert wait_until(lambda: generations() > before, 30)
    assert generations() == before + 1


@pytest.mark.parametrize(
    ("path", "asked", "resumed"),
    [
        ("chat/completions", "messages", "chat.completion.chunk"),
        ("completions", "prompt", "text_completion"),
    ],
)
def test_a_lost_stream_resumes_after_the_characters_its_client_has(
    door: str, path: str, asked: str, resumed: str
) -> None:
    prompt = unique_prompt()
    body = {
        "model": MODEL,
        asked: [{"role": "user", "content": prompt}] if asked == "messages" else prompt,
        "max_tokens": 40,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }

    def text_of(line: str) -> str:
        chunk = json.loads(line.removeprefix("data: "))
        assert chunk["object"] == resumed
        choice = chunk["choices"][0] if chunk["choices"] else {}
        return str(choice.get("text") or (choice.get("delta") or {}).get("content") or "")

    seen = ""
    with httpx.stream("POST", f"{door}/{path}", json=body, timeout=120) as response:
        cid = response.headers["x-llmq-correlation-id"]
        for line in response.iter_lines():
            assert not line.startswith("id: ")  # as OpenAI's and vLLM's servers: none
            if line.startswith("data: {") and text_of(line):
                seen += text_of(line)
                break  # the connection drops here
    last = str(len(seen))  # the client counts the characters it has
    where = f"{door}/results/{cid}/stream"
    wrong = httpx.get(f"{where}?object=chat", headers={"Last-Event-ID": last}, timeout=30)
    assert wrong.status_code == 400 and "object must be one of" in wrong.text
    wrong = httpx.get(where, headers={"Last-Event-ID": f"{last}:end"}, timeout=30)
    assert wrong.status_code == 400 and "is not a count of characters" in wrong.text
    rest = ""
    again = httpx.stream(
        "GET", f"{where}?object={resumed}", headers={"Last-Event-ID": last}, timeout=120
    )
    with again as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                rest += text_of(line)
    result = stored_result(door, cid)
    assert result.status == "ok"  # resumed within the grace time: not cancelled
    assert seen + rest == result.text


def test_two_front_doors_serve_side_by_side(sdk: OpenAI, keyed: dict[str | None, OpenAI]) -> None:
    acme = keyed["acme"]

    def ask(i: int) -> int | None:
        client = sdk if i % 2 else acme
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": unique_prompt(f"Say the number {i}.")}],
            max_tokens=6,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        return None if answer.usage is None else answer.usage.completion_tokens

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    assert answers == [6] * 16


def test_kafka_apps_stream_with_the_async_client(service_settings: ServiceSettings) -> None:
    async def main() -> tuple[Delta | None, InferenceResult]:
        async with AsyncClient(service_settings) as client:
            text, last = "", None
            async for piece in client.stream(
                unique_prompt(), max_tokens=20, temperature=0, ignore_eos=True
            ):
                assert piece.offset == len(text)  # in order, nothing missing
                text += piece.text
                last = piece
            cid = await client.submit(unique_prompt(), max_tokens=4, temperature=0, ignore_eos=True)
            return last, await client.result(cid, wait_s=60)

    last, whole = asyncio.run(main())
    assert last is not None and last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 20
    assert whole.status == "ok" and whole.response is not None
    assert whole.response.usage.completion_tokens == 4
