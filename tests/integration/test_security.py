"""Security basics on the real stack: tenants never see each other's results or cache hits,
prompts and answers stay out of the logs, and a Redis behind a password works unchanged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis
from kafka import KafkaProducer

from llmq.cli import main
from llmq.client import Client, tail
from llmq.pipelined import Pipelined
from schemas.errors import ErrorCode
from schemas.names import REDIS_SEMANTIC_PREFIX, REQUESTS, result_key
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from streams.store import RedisStore
from tests.integration.helpers import collect
from tools.stack.ports import free_block
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SECRET = f"okapi-{uuid.uuid4().hex[:12]}"
"""Unique to this run: found in a log only if something logged a prompt or an answer."""
REDIS_PASSWORD = "redis-pw-91be"


@pytest.fixture
def tenants(service_settings: ServiceSettings, reply_topic: str) -> Iterator[tuple[Client, Client]]:
    """Two fresh tenants' clients listening on one reply topic."""
    run = uuid.uuid4().hex[:8]
    with (
        Client(service_settings, reply_to=reply_topic, tenant=f"sec-a-{run}") as a,
        Client(service_settings, reply_to=reply_topic, tenant=f"sec-b-{run}") as b,
    ):
        yield a, b


def _semantic_entries(stack: LocalStack) -> int:
    store = redis.Redis.from_url(stack.settings.redis_url)
    try:
        keys = store.scan_iter(f"{REDIS_SEMANTIC_PREFIX}*")
        return sum(cast("int", store.xlen(key)) for key in keys)
    finally:
        store.close()


def test_two_tenants_with_one_correlation_id_each_get_their_own_reply(
    tenants: tuple[Client, Client],
) -> None:
    a, b = tenants
    cid = f"shared-{uuid.uuid4().hex[:8]}"
    prompt = f"Name a colour. (ref {uuid.uuid4().hex[:8]})"
    # B's request is refused at once (unknown model), with an error reply keyed by the same id
    # on the same topic while A's generation runs: A's client must not take it for its own.
    a.submit(prompt, correlation_id=cid, max_tokens=16, temperature=0.0)
    refused = b.ask(prompt, correlation_id=cid, model="no-such-model", timeout=120)
    mine = a.result(cid, timeout=300)
    assert (refused.tenant, refused.status) == (b.tenant, "error")
    assert refused.error is not None and refused.error.code is ErrorCode.UNKNOWN_MODEL
    assert (mine.tenant, mine.status, mine.cache) == (a.tenant, "ok", CacheStatus.NONE)
    # The same question under the same id from B: its own generation, not A's cached answer.
    theirs = b.ask(prompt, correlation_id=f"{cid}-2", max_tokens=16, temperature=0.0, timeout=300)
    assert (theirs.tenant, theirs.status, theirs.cache) == (b.tenant, "ok", CacheStatus.NONE)
    again = a.ask(prompt, max_tokens=16, temperature=0.0, timeout=300)
    assert again.cache is CacheStatus.EXACT, "the cache does answer the tenant that filled it"


def test_one_correlation_id_is_stored_per_tenant_and_read_only_by_its_own(
    tenants: tuple[Client, Client], service_settings: ServiceSettings
) -> None:
    a, b = tenants
    cid = f"stored-{uuid.uuid4().hex[:8]}"
    prompt = f"Say hello. (ref {uuid.uuid4().hex[:8]})"
    first = a.ask(prompt, correlation_id=cid, max_tokens=8, temperature=0.0, timeout=300)
    second = b.ask(prompt, correlation_id=cid, max_tokens=8, temperature=0.0, timeout=300)
    assert (first.tenant, second.tenant) == (a.tenant, b.tenant)
    assert first.cache is second.cache is CacheStatus.NONE, "neither answered from the other"
    # From other processes' point of view: the result store, by tenant and id.
    for owner, kept in ((a.tenant, first), (b.tenant, second)):
        with Client(service_settings, listen=False, tenant=owner) as reader:
            assert reader.result(cid, timeout=30) == kept
    only_a = a.ask(prompt, max_tokens=8, temperature=0.0, timeout=300)
    assert only_a.correlation_id is not None
    with Client(service_settings, listen=False, tenant=b.tenant) as intruder:
        with pytest.raises(TimeoutError):
            intruder.result(only_a.correlation_id, timeout=2)
        assert intruder.result(only_a.correlation_id, timeout=10, tenant=a.tenant) == only_a


def test_the_semantic_cache_answers_only_the_tenant_that_taught_it(
    stack: LocalStack, tenants: tuple[Client, Client]
) -> None:
    a, b = tenants
    ref = uuid.uuid4().hex[:8]
    learned = _semantic_entries(stack)
    first = a.ask(f"What is the capital of France? (ref {ref})", max_tokens=16, temperature=0.0)
    assert first.cache is CacheStatus.NONE
    deadline = time.monotonic() + 30
    while _semantic_entries(stack) == learned and time.monotonic() < deadline:
        time.sleep(0.1)  # the question is learned in the background, after the reply
    paraphrase = f"what's the capital of france, ref {ref}??"
    other = b.ask(paraphrase, max_tokens=16, temperature=0.0)
    assert other.cache is CacheStatus.NONE, "another tenant's question must not answer B"
    own = a.ask(paraphrase, max_tokens=16, temperature=0.0)
    assert own.cache is CacheStatus.SEMANTIC, "A's own paraphrase does hit"


def test_prompts_and_answers_stay_out_of_the_stack_logs(
    stack: LocalStack, client: Client, service_settings: ServiceSettings, reply_topic: str
) -> None:
    # The answer is a word of its own, which the schema's grammar, not the model, writes.
    word = f"gnu-{uuid.uuid4().hex[:8]}"
    schema = {
        "type": "object",
        "properties": {"word": {"enum": [word]}},
        "required": ["word"],
        "additionalProperties": False,
    }
    answered = client.ask(
        f"Repeat this word exactly: {SECRET}",
        max_tokens=64,
        temperature=0.0,
        timeout=300,
        response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}},
    )
    assert answered.status == "ok", answered.error
    assert json.loads(answered.text or "") == {"word": word}
    # Invalid requests carrying the secret in fields that fail validation.
    bad_cid = f"bad-{uuid.uuid4().hex[:8]}"
    bad = {
        "correlation_id": bad_cid,
        "reply_to": reply_topic,
        "lane": SECRET,
        "body": {"messages": [{"role": SECRET, "content": SECRET}], "top_p": SECRET},
    }
    replies = tail(service_settings.kafka_bootstrap, reply_topic)
    producer = KafkaProducer(bootstrap_servers=service_settings.kafka_bootstrap, acks="all")
    try:
        producer.send(REQUESTS, json.dumps(bad).encode()).get(timeout=30)
        records = collect(replies, done=lambda rs: len(rs) > 0, timeout_s=120)
    finally:
        producer.close()
        replies.close()
    [rejected] = [InferenceResult.model_validate_json(r.value) for r in records]
    assert rejected.correlation_id == bad_cid and rejected.error is not None
    assert SECRET not in rejected.error.message
    logs = sorted((stack.settings.state_dir / "run").glob("*.log"))
    assert {p.name for p in logs} >= {"kafka.log", "redis.log", "streams.log"}
    leaks = [p.name for p in logs if SECRET in p.read_text(errors="replace")]
    assert leaks == [], f"the secret is in {leaks}"
    assert [p.name for p in logs if word in p.read_text(errors="replace")] == []


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of its own that requires a password; yields its URL, password in it."""
    port = free_block(1)
    folder: Path = tmp_path_factory.mktemp("redis-auth")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--requirepass", REDIS_PASSWORD],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
    probe = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None, "redis-server"
                time.sleep(0.05)
        yield url
    finally:
        probe.close()
        server.terminate()
        server.wait(timeout=10)


def test_the_result_store_works_behind_a_redis_password(redis_url: str) -> None:
    """The stream processor's store and the client, both built from the URL as it is."""
    result = InferenceResult(correlation_id="pw-1", tenant="acme", status="ok")

    async def keep() -> None:
        client: aioredis.Redis = aioredis.Redis.from_url(redis_url, socket_timeout=2)
        try:
            await RedisStore(Pipelined(client), cache_ttl_s=60, result_ttl_s=60).keep_result(result)
        finally:
            await client.connection_pool.disconnect()

    asyncio.run(keep())
    with Client(ServiceSettings(redis_url=redis_url), listen=False, tenant="acme") as owner:
        owner.ping_store()
        assert owner.result("pw-1", timeout=5) == result
    stored = redis.Redis.from_url(redis_url)
    try:
        assert stored.exists(result_key("acme", "pw-1")) == 1
    finally:
        stored.close()


def test_a_wrong_redis_password_is_reported_without_it(redis_url: str) -> None:
    wrong = redis_url.replace(REDIS_PASSWORD, "not-the-redis-pw")
    with (
        Client(ServiceSettings(redis_url=wrong), listen=False) as client,
        pytest.raises(RuntimeError, match="the result store") as caught,
    ):
        client.ping_store()
    message = str(caught.value)
    assert "not-the-redis-pw" not in message
    assert ":***@127.0.0.1" in message


@pytest.mark.parametrize(
    "args", [["costs", "--days", "1"], ["costs", "--experiment", "none-such"]], ids=["days", "ab"]
)
def test_llmq_costs_names_its_redis_without_the_password(
    redis_url: str,
    args: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Nothing to report is the first thing a new install prints: into terminals and logs."""
    monkeypatch.setenv("LLMQ_REDIS_URL", redis_url)
    assert main(args) == 1
    said = capsys.readouterr().out
    assert REDIS_PASSWORD not in said
    assert ":***@127.0.0.1" in said
