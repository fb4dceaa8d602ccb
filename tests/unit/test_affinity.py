"""Prefix affinity: prefix groups, each group's order of partitions, the load bound, and the
partition a work record is published to."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from schemas.lanes import Lane
from schemas.names import work_topic
from schemas.request import ChatMessage, InferenceRequest
from schemas.route import Route
from schemas.work import WorkItem
from streams.affinity import (
    DEFAULT_PREFIX_CHARS,
    FLOOR_PER_PARTITION,
    SLACK,
    WINDOW_PER_PARTITION,
    Balance,
    PrefixAffinity,
    prefix_group,
    ranked,
)
from streams.outbox import Outbox
from tests.unit.stages import FakeSend, FakeStore

pytestmark = pytest.mark.timeout(30)

SYSTEM = "You are the support assistant of a bicycle shop. " * 20  # ~1,000 characters
TOPIC = work_topic("smollm2-135m", Lane.STANDARD)


def _messages(question: str, system: str = SYSTEM) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=question)]


def _work(question: str, system: str = SYSTEM, tenant: str = "acme") -> WorkItem:
    request = InferenceRequest.model_validate(
        {
            "correlation_id": "req-1",
            "tenant": tenant,
            "body": {"messages": [m.model_dump() for m in _messages(question, system)]},
        }
    )
    return WorkItem(
        request=request,
        model="smollm2-135m",
        fingerprint=f"fp-{question}-{system}",
        route=Route(requested="smollm2-135m", chain=["smollm2-135m"]),
    )


async def _four(topic: str) -> int:
    return 4


def test_prompts_that_share_their_first_characters_share_a_group() -> None:
    a = prefix_group(_messages("How do I fix a flat tyre?"), DEFAULT_PREFIX_CHARS)
    b = prefix_group(_messages("Which chain fits a 7-speed?"), DEFAULT_PREFIX_CHARS)
    other = prefix_group(_messages("How do I fix a flat tyre?", "Be terse. " + SYSTEM), 512)
    assert a is not None and a == b
    assert other is not None and other != a


def test_a_prompt_no_longer_than_the_prefix_has_no_group() -> None:
    short = _messages("Hi", system="Be brief.")
    assert prefix_group(short, DEFAULT_PREFIX_CHARS) is None
    assert prefix_group(_messages("Hi"), 0) is None


def test_roles_are_part_of_the_prefix() -> None:
    as_user = [ChatMessage(role="user", content=SYSTEM)]
    as_system = [ChatMessage(role="system", content=SYSTEM)]
    assert prefix_group(as_user, 512) != prefix_group(as_system, 512)


def test_a_tenant_scoped_group_is_one_tenants_alone() -> None:
    messages = _messages("How do I fix a flat tyre?")
    acme, globex = (prefix_group(messages, 512, tenant) for tenant in ("acme", "globex"))
    assert acme is not None and globex is not None and acme != globex
    assert acme == prefix_group(_messages("Which chain fits a 7-speed?"), 512, "acme")
    assert prefix_group(messages, 512) not in (acme, globex)
    assert prefix_group(_messages("Hi", system="Be brief."), 512, "acme") is None


def test_tenants_sharing_a_prefix_spread_when_their_caches_are_apart() -> None:
    async def place(items: list[WorkItem], salted: str) -> list[int]:
        affinity = PrefixAffinity(DEFAULT_PREFIX_CHARS, _four, frozenset({salted}))
        return [await affinity.partition(TOPIC, item) for item in items]

    tenants = [f"tenant-{n}" for n in range(8)]
    items = [_work("How do I fix a flat tyre?", tenant=tenant) for tenant in tenants]
    apart = asyncio.run(place(items, salted="smollm2-135m"))
    assert apart == [ranked(prefix_group(_messages("x"), 512, t) or b"", 4)[0] for t in tenants]
    assert len(set(apart)) > 1
    assert len(set(asyncio.run(place(items, salted="a-remote-model")))) == 1  # one cache
    one_tenant = [_work(f"question {n}", tenant="tenant-3") for n in range(8)]
    assert set(asyncio.run(place(one_tenant, salted="smollm2-135m"))) == {apart[3]}


def test_each_group_ranks_every_partition_once_and_groups_spread_over_them() -> None:
    firsts = Counter(ranked(f"group-{n}".encode(), 4)[0] for n in range(4_000))
    assert sorted(ranked(b"group", 4)) == [0, 1, 2, 3]
    assert ranked(b"group", 4) == ranked(b"group", 4)
    assert set(firsts) == {0, 1, 2, 3}
    assert max(firsts.values()) < 1.1 * min(firsts.values())


def test_a_hot_group_stays_on_its_partition_until_the_bound_then_moves_to_its_second() -> None:
    balance = Balance(4)
    order = ranked(b"hot", 4)
    first = int(SLACK * FLOOR_PER_PARTITION)  # the bound before there is any history
    placed = [balance.place(order) for _ in range(first + 2)]
    assert placed == [order[0]] * first + [order[1]] * 2


def test_a_burst_shorter_than_the_window_is_bounded_too() -> None:
    balance = Balance(4)
    order = ranked(b"hot", 4)
    burst = Counter(balance.place(order) for _ in range(192))
    assert max(burst.values()) <= SLACK * 192 / 4


def test_the_bound_holds_for_a_group_that_is_all_the_traffic() -> None:
    balance = Balance(4)
    order = ranked(b"hot", 4)
    window = [balance.place(order) for _ in range(10 * WINDOW_PER_PARTITION * 4)]
    shares = Counter(window[-WINDOW_PER_PARTITION * 4 :])
    assert max(shares.values()) <= SLACK * WINDOW_PER_PARTITION


def test_a_group_with_an_eighth_of_the_traffic_keeps_to_its_first_two_partitions() -> None:
    balance = Balance(4)
    hot, placed = ranked(b"hot", 4), []
    for n in range(4_000):
        if n % 8:
            placed.append(balance.place(ranked(f"cold-{n}".encode(), 4)))
        else:
            placed.append(balance.place(hot))
    hot_counts = Counter(placed[::8])
    assert set(hot_counts) == set(hot[:2])
    assert hot_counts[hot[0]] > 0.8 * 500
    last_window = Counter(placed[-WINDOW_PER_PARTITION * 4 :])
    assert max(last_window.values()) <= SLACK * WINDOW_PER_PARTITION


def test_records_sharing_a_prefix_go_to_one_partition_others_by_fingerprint() -> None:
    async def place(items: list[WorkItem]) -> list[int]:
        affinity = PrefixAffinity(DEFAULT_PREFIX_CHARS, _four)
        return [await affinity.partition(TOPIC, item) for item in items]

    shared = [_work(f"question {n}") for n in range(int(SLACK * FLOOR_PER_PARTITION))]
    briefs = [_work("Hi", system=f"Be brief ({n}).") for n in range(10)]
    assert len(set(asyncio.run(place(shared)))) == 1
    by_fingerprint = asyncio.run(place(briefs))
    assert by_fingerprint == [ranked(brief.fingerprint.encode(), 4)[0] for brief in briefs]
    assert len(set(by_fingerprint)) > 1


def test_a_topics_bound_holds_across_records_and_follows_its_partition_count() -> None:
    """A Balance made anew for each record forgot the records before it: a hot prefix sent
    all of them to one partition. One kept when partitions were added placed by the old
    count: an IndexError, or the new partitions left idle."""
    sizes = {TOPIC: 4}

    async def partitions(topic: str) -> int:
        return sizes[topic]

    affinity = PrefixAffinity(DEFAULT_PREFIX_CHARS, partitions)
    bound = int(SLACK * FLOOR_PER_PARTITION)

    async def place() -> Counter[int]:
        items = [_work(f"question {n}") for n in range(3 * bound)]
        return Counter([await affinity.partition(TOPIC, item) for item in items])

    group = prefix_group(_messages("x"), DEFAULT_PREFIX_CHARS) or b""
    assert asyncio.run(place()) == dict.fromkeys(ranked(group, 4)[:3], bound)
    sizes[TOPIC] = 8
    added = asyncio.run(place())
    assert added == dict.fromkeys(ranked(group, 8)[:3], bound)
    assert max(added) >= 4, "a new partition takes the prefix's records"


def test_the_outbox_publishes_work_to_the_placers_partition() -> None:
    work = _work("How do I fix a flat tyre?")

    async def main() -> tuple[FakeSend, FakeSend]:
        placed, unplaced = FakeSend(), FakeSend()
        await Outbox(FakeStore(), placed, placer=PrefixAffinity(512, _four)).work(work)
        await Outbox(FakeStore(), unplaced).work(work)
        return placed, unplaced

    placed, unplaced = asyncio.run(main())
    assert [s.partition for s in placed.sent] == [
        ranked(prefix_group(_messages("x"), 512) or b"", 4)[0]
    ]
    assert [s.partition for s in unplaced.sent] == [None]
    assert placed.sent[0].key == unplaced.sent[0].key == work.fingerprint.encode()
