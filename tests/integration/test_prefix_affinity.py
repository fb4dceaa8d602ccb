"""Prefix affinity on the real stack: the stream processor publishes work whose prompts share
a long prefix to one partition of the work topic, and spreads work that shares none; the
engine reuses a cached prefix for the tenant whose requests left it, and no other."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, TopicPartition

from llmq.client import Client
from schemas.catalog import Catalog
from schemas.names import work_topics
from schemas.request import CacheMode, ChatMessage
from schemas.settings import ServiceSettings
from schemas.work import WorkItem
from streams.affinity import DEFAULT_PREFIX_CHARS, prefix_group, ranked
from tests.integration.helpers import Record, collect
from tools.stack.stack import LocalStack

pytestmark = pytest.mark.integration

MODEL = Catalog.builtin().default
MANUAL = (
    "You answer questions about the Model 7 espresso machine. The boiler holds 1.2 litres; "
    "the pump gives 15 bar; descale every 200 shots with citric acid; the steam wand takes "
    "40 seconds to heat; the grinder has 30 settings, finest at 1. "
) * 4


def _partitions(settings: ServiceSettings, wanted: set[str]) -> dict[str, int]:
    """The partition of the work record of each correlation id in `wanted`, read from the
    start of every lane's work topic."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None
    )
    try:
        parts = [
            TopicPartition(topic, p)
            for topic in work_topics(MODEL)
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        records = collect(consumer, lambda got: len(_ours(got, wanted)) == len(wanted), 60)
        return _ours(records, wanted)
    finally:
        consumer.close()


def _ours(records: list[Record], wanted: set[str]) -> dict[str, int]:
    found = {}
    for record in records:
        cid = WorkItem.model_validate_json(record.value).request.correlation_id
        if cid in wanted:
            found[cid] = record.partition
    return found


def _preferred(tenant: str | None, partitions: int) -> list[int]:
    """The two partitions MANUAL's prefix group prefers: `tenant`'s, or every tenant's."""
    chat = [ChatMessage(role="system", content=MANUAL), ChatMessage(role="user", content="?")]
    group = prefix_group(chat, DEFAULT_PREFIX_CHARS, tenant)
    assert group is not None
    return ranked(group, partitions)[:2]


def _tenants_apart(partitions: int) -> list[str]:
    """Four tenants (fixed names, so fixed hashes) whose groups of MANUAL prefer neither of
    the partitions its tenant-less group prefers: their work lands elsewhere only when the
    stream processor puts the tenant in the group."""
    shared = set(_preferred(None, partitions))
    names = (f"shop-{n}" for n in range(1_000))
    apart = [name for name in names if not shared & set(_preferred(name, partitions))][:4]
    assert len(apart) == 4, f"the stack's {partitions} partitions leave no two apart"
    return apart


def test_work_sharing_a_long_prompt_prefix_lands_on_one_partition(
    client: Client, service_settings: ServiceSettings, stack: LocalStack
) -> None:
    assert len(MANUAL) > DEFAULT_PREFIX_CHARS
    tag = uuid.uuid4().hex[:8]

    def submit(system: str, question: str, tenant: str | None = None) -> str:
        chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return client.submit(
            chat, tenant=tenant, max_tokens=1, temperature=0.0, cache=CacheMode.OFF
        )

    shared = [submit(MANUAL, f"Question {n} ({tag})?") for n in range(8)]
    alone = [submit(f"Manual {n} ({tag}). {MANUAL}", "What pressure?") for n in range(16)]
    # The same prefix from tenants of its own (LLMQ_PREFIX_CACHE_SCOPE=tenant), each of whose
    # groups prefers two partitions other than the two the tenant-less group prefers.
    count = stack.settings.partitions
    apart = _tenants_apart(count)
    tenants = [submit(MANUAL, f"Question ({tag})?", tenant) for tenant in apart]
    for cid in shared + alone + tenants:
        assert client.result(cid, timeout=300).status == "ok"

    placed = _partitions(service_settings, set(shared + alone + tenants))

    assert len({placed[cid] for cid in shared}) <= 2  # one, or its second when the first is full
    assert len({placed[cid] for cid in alone}) >= 3
    for cid, tenant in zip(tenants, apart, strict=True):
        assert placed[cid] in _preferred(tenant, count)  # with no tenant in the group: not


def test_a_tenant_reuses_only_the_prefixes_its_own_requests_left(client: Client) -> None:
    """vLLM's cache_salt per tenant (LLMQ_PREFIX_CACHE_SCOPE=tenant): another tenant asking
    after the same long system prompt has it computed again, then reuses its own."""
    tag = uuid.uuid4().hex[:8]
    system = f"Manual {tag}. {MANUAL}"  # a prefix no earlier request left in the cache

    def cached(tenant: str, question: str) -> int:
        chat = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        cid = client.submit(chat, tenant=tenant, max_tokens=1, temperature=0.0, cache=CacheMode.OFF)
        result = client.result(cid, timeout=300)
        assert result.status == "ok" and result.response is not None, result
        usage = result.response.usage
        assert usage is not None and usage.prompt_tokens_details is not None, usage
        assert usage.prompt_tokens > 200, "the manual is a long prefix"
        return usage.prompt_tokens_details.cached_tokens

    first, second = f"acme-{tag}", f"globex-{tag}"
    assert cached(first, "What pressure?") == 0
    assert cached(first, "How often to descale?") >= 160  # its own prefix, whole blocks of it
    assert cached(second, "What pressure?") == 0  # the same prompt: not another tenant's
    assert cached(second, "How long does the wand heat?") >= 160
