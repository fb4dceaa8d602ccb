"""Requests through the whole real pipeline: Kafka, the stream processor, Redis, vLLM."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmq.client import Client, tail
from schemas.errors import ErrorCode
from schemas.names import DLQ, HEADER_ERROR_CODE, HEADER_REASON, REQUESTS, STREAMS_APP_ID
from schemas.request import CacheMode
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from tests.integration.helpers import collect, header, metric
from tools.faults.probe import Backlog
from tools.faults.rig import wait_until
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _worker_port(stack: LocalStack) -> int:
    return stack.settings.metrics_base_port + 1


def test_the_model_answers_a_question(client: Client) -> None:
    result = client.ask(
        "What is the capital of France?",
        temperature=0.0,
        max_tokens=32,
        ignore_eos=True,  # a whole generation, whenever the model would stop
        cache=CacheMode.OFF,
    )
    assert result.status == "ok", result.error
    assert result.model_used == "smollm2-135m"
    assert result.cache is CacheStatus.NONE
    assert result.response is not None
    assert result.response.usage.completion_tokens == 32
    assert result.response.choices[0].finish_reason == "length"
    assert result.response.usage.prompt_tokens > 0
    assert result.timings.ttft_ms is not None
    assert result.timings.total_ms is not None and result.timings.total_ms > 0


def test_fifty_concurrent_requests_each_answered_exactly_once(
    service_settings: ServiceSettings, reply_topic: str
) -> None:
    replies = tail(service_settings.kafka_bootstrap, reply_topic)
    with Client(service_settings, reply_to=reply_topic) as client:
        ids = [
            client.submit(f"Count from {i} to {i + 3}.", max_tokens=16, temperature=0.0)
            for i in range(50)
        ]
        results = [client.result(cid, timeout=300) for cid in ids]
    assert all(r.status == "ok" for r in results), [r.error for r in results if r.error]
    assert [r.correlation_id for r in results] == ids
    # Everything has been answered; read the reply topic a while longer to catch duplicates.
    records = collect(replies, done=lambda _: False, timeout_s=5)
    replies.close()
    counts = Counter(InferenceResult.model_validate_json(r.value).correlation_id for r in records)
    assert counts == Counter({cid: 1 for cid in ids})
    # And the stream processor committed every request it answered: a commit stalled
    # behind a record it thinks in flight would have them all admitted again on a restart.
    lag = Backlog(service_settings.kafka_bootstrap, STREAMS_APP_ID, [REQUESTS])
    try:
        assert wait_until(lambda: lag() == 0, 30), lag()
    finally:
        lag.close()


def test_a_repeated_deterministic_request_is_served_from_the_cache(
    client: Client, stack: LocalStack
) -> None:
    question = f"Name a colour. ({uuid.uuid4().hex[:8]})"
    port = _worker_port(stack)
    before = metric(port, "llmq_worker_generations_total", outcome="ok")
    first = client.ask(question, temperature=0.0, max_tokens=16)
    after_first = metric(port, "llmq_worker_generations_total", outcome="ok")
    second = client.ask(question, temperature=0.0, max_tokens=16)
    after_second = metric(port, "llmq_worker_generations_total", outcome="ok")

    assert first.status == second.status == "ok"
    assert first.cache is CacheStatus.NONE
    assert second.cache is CacheStatus.EXACT
    assert second.text == first.text
    assert second.correlation_id != first.correlation_id
    assert after_first == before + 1
    assert after_second == after_first, "the cached answer must not reach the engine"


def test_sampled_requests_are_not_cached_unless_they_opt_in(
    client: Client, stack: LocalStack
) -> None:
    question = f"Say something. ({uuid.uuid4().hex[:8]})"
    port = _worker_port(stack)
    before = metric(port, "llmq_worker_generations_total", outcome="ok")
    a = client.ask(question, temperature=0.9, max_tokens=8)
    b = client.ask(question, temperature=0.9, max_tokens=8)
    assert a.cache is CacheStatus.NONE and b.cache is CacheStatus.NONE
    assert metric(port, "llmq_worker_generations_total", outcome="ok") == before + 2
    c = client.ask(question, temperature=0.9, max_tokens=8, cache=CacheMode.ALWAYS)
    d = client.ask(question, temperature=0.9, max_tokens=8, cache=CacheMode.ALWAYS)
    assert c.cache is CacheStatus.NONE and d.cache is CacheStatus.EXACT
    assert d.text == c.text


def _kcat_send(broker: str, key: str, value: bytes, *options: str) -> None:
    """One record on llmq.requests, as an app in any language sends it."""
    command = ["kcat", "-P", "-b", broker, "-t", REQUESTS, "-k", key, *options]
    subprocess.run(command, input=value, check=True, timeout=30)


def _kcat_read(broker: str, topic: str, count: int) -> list[Any]:
    """The first `count` records of `topic`, read as JSON."""
    command = ["kcat", "-C", "-b", broker, "-t", topic, "-o", "beginning", "-c", str(count)]
    out = subprocess.run([*command, "-f", "%s\n"], capture_output=True, check=True, timeout=300)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_raw_json_from_kcat_is_answered_on_the_reply_topic(
    service_settings: ServiceSettings, reply_topic: str
) -> None:
    cid = f"kcat-{uuid.uuid4().hex[:8]}"
    raw = json.dumps(
        {
            "correlation_id": cid,
            "tenant": "kcat-app",
            "reply_to": reply_topic,
            "body": {
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 24,
                "ignore_eos": True,
                "temperature": 0,
            },
        }
    )
    broker = service_settings.kafka_bootstrap
    _kcat_send(broker, cid, raw.encode())
    [reply] = _kcat_read(broker, reply_topic, 1)
    assert reply["correlation_id"] == cid
    assert reply["status"] == "ok"
    assert reply["tenant"] == "kcat-app"
    [choice] = reply["response"]["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    assert reply["response"]["usage"]["completion_tokens"] == 24


def test_records_an_app_compressed_with_each_of_kafkas_codecs_are_answered(
    service_settings: ServiceSettings, reply_topic: str
) -> None:
    """An lz4, snappy or zstd batch stopped the stream processor's fetcher for everyone:
    aiokafka reads them only with cramjam, which the lock lacked."""
    broker = service_settings.kafka_bootstrap
    sent = []
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        cid = f"{codec}-{uuid.uuid4().hex[:8]}"
        sent.append(cid)
        raw = {
            "correlation_id": cid,
            "tenant": "kcat-app",
            "reply_to": reply_topic,
            "body": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
        }
        _kcat_send(broker, cid, json.dumps(raw).encode(), "-z", codec)
    replies = _kcat_read(broker, reply_topic, 4)
    assert {reply["correlation_id"]: reply["status"] for reply in replies} == dict.fromkeys(
        sent, "ok"
    )


def test_malformed_and_invalid_requests_get_error_replies_and_land_on_the_dlq(
    service_settings: ServiceSettings, reply_topic: str
) -> None:
    broker = service_settings.kafka_bootstrap
    dlq = tail(broker, DLQ)
    replies = tail(broker, reply_topic)
    tag = uuid.uuid4().hex[:8]
    valid_body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    cases: dict[str, tuple[bytes, ErrorCode]] = {
        f"json-{tag}": (b'{"correlation_id": "broken', ErrorCode.INVALID_JSON),
        f"schema-{tag}": (
            json.dumps(
                {"correlation_id": f"schema-{tag}", "reply_to": reply_topic, "body": {}}
            ).encode(),
            ErrorCode.INVALID_REQUEST,
        ),
        f"model-{tag}": (
            json.dumps(
                {
                    "correlation_id": f"model-{tag}",
                    "reply_to": reply_topic,
                    "model": "no-such-model",
                    "body": valid_body,
                }
            ).encode(),
            ErrorCode.UNKNOWN_MODEL,
        ),
        f"big-{tag}": (
            json.dumps(
                {
                    "correlation_id": f"big-{tag}",
                    "reply_to": reply_topic,
                    "body": {"messages": [{"role": "user", "content": "x" * 100_000}]},
                }
            ).encode(),
            ErrorCode.PROMPT_TOO_LARGE,
        ),
    }
    subprocess.run(
        ["kcat", "-P", "-b", broker, "-t", REQUESTS, "-K", "\t", "-D", "\n"],
        input=b"\n".join(key.encode() + b"\t" + value for key, (value, _) in cases.items()),
        check=True,
        timeout=30,
    )
    dead = collect(dlq, lambda rs: {r.key.decode() for r in rs if r.key} >= set(cases), 120)
    answered = collect(replies, lambda rs: len(rs) >= len(cases) - 1, 120)
    dlq.close()
    replies.close()

    by_key = {r.key.decode(): r for r in dead if r.key and r.key.decode() in cases}
    assert set(by_key) == set(cases)
    for key, (value, code) in cases.items():
        assert by_key[key].value == value, "the DLQ keeps the raw record"
        assert header(by_key[key], HEADER_ERROR_CODE) == code.value
        assert header(by_key[key], HEADER_REASON)
    errors = {}
    for record in answered:
        result = InferenceResult.model_validate_json(record.value)
        assert result.error is not None
        errors[result.correlation_id] = result.error
    # The unparseable record names no reply topic, so only the other three are answered.
    assert set(errors) == {f"schema-{tag}", f"model-{tag}", f"big-{tag}"}
    assert errors[f"schema-{tag}"].code is ErrorCode.INVALID_REQUEST
    assert "body.messages" in errors[f"schema-{tag}"].message
    assert errors[f"model-{tag}"].code is ErrorCode.UNKNOWN_MODEL
    assert "smollm2-135m" in errors[f"model-{tag}"].message
    assert errors[f"big-{tag}"].code is ErrorCode.PROMPT_TOO_LARGE
    assert not any(e.retriable for e in errors.values())


def test_a_result_is_retrievable_by_correlation_id_from_another_process(
    client: Client, cli_env: dict[str, str], llmq_bin: Path
) -> None:
    cid = client.submit("What is 2 + 2?", max_tokens=16, temperature=0.0)
    mine = client.result(cid, timeout=120)
    out = subprocess.run(
        [str(llmq_bin), "result", cid, "--json", "--timeout", "30"],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    theirs = InferenceResult.model_validate_json(out.stdout)
    assert theirs.correlation_id == cid
    assert theirs.text == mine.text


def test_an_unknown_correlation_id_times_out_with_a_clear_message(
    cli_env: dict[str, str], llmq_bin: Path
) -> None:
    out = subprocess.run(
        [str(llmq_bin), "result", "no-such-request", "--timeout", "1"],
        env=cli_env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 1  # not there in time: not bad input
    assert "no result for no-such-request" in out.stderr
