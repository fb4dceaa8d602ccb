"""Reading what the stack published (topic records, Prometheus metrics, stored results),
prompts no cache answers, and a throwaway redis-server for tests of Redis alone."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis
import redis.asyncio as aioredis
from kafka import KafkaConsumer

from schemas.result import InferenceResult
from tools.faults.probe import samples
from tools.stack.ports import free_block

Record = Any
"""kafka-python's ConsumerRecord (the library is untyped)."""

REPO = Path(__file__).resolve().parents[2]
"""The checkout under test."""
SERVED = "smollm2-135m"
"""The model on the session's OpenAI server: the checkpoint the stack's vLLM worker serves."""
VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
VERDICT_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "verdict", "schema": VERDICT_SCHEMA},
}
"""A response_format with exactly two answers: whatever the model prefers, the engine can
only write one of them and then stop."""
VERDICTS = ({"answer": "yes"}, {"answer": "no"})


def unique_prompt(what: str = "Count from 1 to 100, one number per line.") -> str:
    """A prompt no other test asks, so no cache answers it."""
    return f"{what} (run {uuid.uuid4().hex[:8]})"


def stored_result(door: str, correlation_id: str, key: str = "unused") -> InferenceResult:
    """The front door's stored result of a request, once the result store has it."""
    deadline = time.monotonic() + 30
    while True:
        got = httpx.get(
            f"{door}/results/{correlation_id}", headers={"Authorization": f"Bearer {key}"}
        )
        if got.status_code == 200 or time.monotonic() > deadline:
            assert got.status_code == 200, got.text
            return InferenceResult.model_validate_json(got.content)
        time.sleep(0.2)


def fetch(url: str, timeout_s: float = 5) -> str:
    """The body of a GET."""
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:
        return str(resp.read().decode())


def collect(
    consumer: KafkaConsumer,
    done: Callable[[list[Record]], bool],
    timeout_s: float,
) -> list[Record]:
    """Poll until `done(records)` holds or the time is up; returns everything read."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=250).values():
            records.extend(batch)
        if done(records):
            break
    return records


def header(record: Record, name: str) -> str | None:
    """One header of a record, decoded."""
    for key, value in record.headers or []:
        if key == name:
            return bytes(value).decode()
    return None


def metric(port: int, name: str, **labels: str) -> float:
    """The current value of one sample on a process's /metrics endpoint (0 when absent)."""
    return samples(fetch(f"http://127.0.0.1:{port}/metrics"), (name,), labels)[name]


def start_redis() -> tuple[subprocess.Popen[bytes], int]:
    """A throwaway redis-server on a free loopback port, answering PING."""
    port = free_block(1)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    probe = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            probe.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.02)
        finally:
            probe.close()
    return proc, port


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


T = TypeVar("T")


def run_async(port: int, body: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
    """Run `body` with a fresh asyncio client of the Redis on `port` on its own event loop."""
    return run_with(lambda: aioredis.Redis(port=port), body)


def run_with(
    connect: Callable[[], aioredis.Redis],
    body: Callable[[aioredis.Redis], Awaitable[T]],
) -> T:
    """Run `body` with the client `connect` makes, on an event loop of its own."""

    async def main() -> T:
        client = connect()
        try:
            return await body(client)
        finally:
            await client.connection_pool.disconnect()

    return asyncio.run(main())
