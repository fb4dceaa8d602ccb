"""Coalescing on the real stack: copies of a request in flight share one engine generation,
also across a restart of the stream processor. Runs before test_stack.py (file order)."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmq.client import Client, tail
from schemas.result import CacheStatus, InferenceResult
from schemas.settings import ServiceSettings
from tests.integration.helpers import collect, metric
from tools.stack.stack import LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _generations(stack: LocalStack) -> float:
    return metric(
        stack.settings.metrics_base_port + 1, "llmq_worker_generations_total", outcome="ok"
    )


def _coalesced(stack: LocalStack) -> float:
    return metric(
        stack.settings.metrics_base_port, "llmq_streams_requests_total", outcome="coalesced"
    )


def _submit_copies(
    client: Client, prompt: str, n: int, max_tokens: int, ignore_eos: bool = False
) -> list[str]:
    """n identical deterministic requests, sent from 16 threads at once."""
    with ThreadPoolExecutor(16) as pool:
        return list(
            pool.map(
                lambda _: client.submit(
                    prompt, max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos
                ),
                range(n),
            )
        )


def _replies_once(records: list[object], ids: list[str]) -> list[InferenceResult]:
    """The results read from a reply topic, checked to be one per id."""
    results = [InferenceResult.model_validate_json(r.value) for r in records]  # type: ignore[attr-defined]
    counts = Counter(r.correlation_id for r in results)
    assert counts == Counter({cid: 1 for cid in ids}), "every copy answered exactly once"
    return results


def test_a_hundred_identical_requests_make_one_generation(
    stack: LocalStack, service_settings: ServiceSettings, reply_topic: str
) -> None:
    prompt = f"Describe a lighthouse in two sentences. ({uuid.uuid4().hex[:8]})"
    before = _generations(stack)
    replies = tail(service_settings.kafka_bootstrap, reply_topic)
    with Client(service_settings, reply_to=reply_topic, listen=False) as client:
        # ignore_eos: the generation runs its 96 tokens whenever the model would stop, so
        # copies come while it runs.
        ids = _submit_copies(client, prompt, 100, max_tokens=96, ignore_eos=True)
    records = collect(replies, done=lambda rs: len(rs) >= 100, timeout_s=300)
    # Everything is answered; listen a while longer to catch duplicates.
    records += collect(replies, done=lambda _: False, timeout_s=5)
    replies.close()
    results = _replies_once(records, ids)
    assert _generations(stack) - before == 1, "one engine generation for all 100 copies"
    assert {r.text for r in results} == {results[0].text}
    assert all(r.status == "ok" for r in results)
    caches = Counter(r.cache for r in results)
    # The leader's own; copies that came while it ran are coalesced, any later ones cached.
    assert caches[CacheStatus.NONE] == 1
    assert caches[CacheStatus.COALESCED] + caches[CacheStatus.EXACT] == 99
    assert caches[CacheStatus.COALESCED] > 0
    print(f"\n100 copies: {dict(caches)}, 1 generation")


def test_followers_get_their_answer_across_a_stream_processor_restart(
    stack: LocalStack, service_settings: ServiceSettings, reply_topic: str
) -> None:
    prompt = f"Write a long story about a dragon who learns to bake. ({uuid.uuid4().hex[:8]})"
    before = _generations(stack)
    streams = next(c.proc for c in stack.components() if c.proc.name == "streams")
    replies = tail(service_settings.kafka_bootstrap, reply_topic)
    with Client(service_settings, reply_to=reply_topic, listen=False) as client:
        # ignore_eos: the generation runs its 400 tokens, through the restart below, however
        # soon the model would have stopped.
        leader = client.submit(prompt, max_tokens=400, temperature=0.0, ignore_eos=True)
        coalesced_before = _coalesced(stack)
        time.sleep(0.5)
        followers = _submit_copies(client, prompt, 20, max_tokens=400, ignore_eos=True)
        deadline = time.monotonic() + 60
        while _coalesced(stack) - coalesced_before < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _coalesced(stack) - coalesced_before == 20, "all 20 copies wait as followers"
        # The generation is still running: restart the stream processor under it.
        worker_port = stack.settings.metrics_base_port + 1
        assert metric(worker_port, "llmq_worker_in_flight") > 0, "the leader's generation runs"
        assert streams.stop(), "the stream processor was running"
        stack.up(say=lambda _: None)
    ids = [leader, *followers]
    records = collect(replies, done=lambda rs: len(rs) >= len(ids), timeout_s=300)
    records += collect(replies, done=lambda _: False, timeout_s=5)
    replies.close()
    results = _replies_once(records, ids)
    assert all(r.status == "ok" for r in results)
    assert {r.text for r in results} == {results[0].text}
    assert Counter(r.cache for r in results) == Counter(
        {CacheStatus.NONE: 1, CacheStatus.COALESCED: 20}
    )
    assert _generations(stack) - before == 1
