"""Prefix affinity: prefix groups, each group's order of partitions, the load bound, and the
partition a work record is published to."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from typing import Any

import pytest

from schemas.catalog import ModelSpec
from schemas.lanes import Lane
from schemas.names import work_topic
from schemas.request import ChatBody, ChatMessage, InferenceRequest
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
    uncached,
)
from streams.outbox import Outbox
from tests.unit.stages import FakeSend, FakeStore
from workers.assignor import NO_CLAIM, share

pytestmark = pytest.mark.timeout(30)

SYSTEM = "You are the support assistant of a bicycle shop. " * 20  # ~1,000 characters
TOPIC = work_topic("smollm2-135m", Lane.STANDARD)


def _messages(question: str, system: str = SYSTEM) -> list[ChatMessage]:
    return [ChatMessage(role="system", content=system), ChatMessage(role="user", content=question)]


def _work(question: str, system: str = SYSTEM, tenant: str = "acme") -> WorkItem:
    messages = [m.model_dump() for m in _messages(question, system)]
    return _item(messages, fingerprint=f"fp-{question}-{system}", tenant=tenant)


def _item(messages: list[dict[str, Any]], fingerprint: str, tenant: str = "acme") -> WorkItem:
    request = InferenceRequest.model_validate(
        {"correlation_id": "req-1", "tenant": tenant, "body": {"messages": messages}}
    )
    return WorkItem(
        request=request,
        model="smollm2-135m",
        fingerprint=fingerprint,
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


def test_a_conversations_later_turns_are_grouped_by_its_opening() -> None:
    """Its opening (through the first user message) is the same at every turn; a long system
    prompt that all conversations share no longer makes them one group."""
    opening = _messages("Conversation 1: my brakes squeal.")
    answer = ChatMessage(role="assistant", content="Clean the rims. " * 30)
    then = ChatMessage(role="user", content="They still squeal.")
    second = prefix_group([*opening, answer, then], DEFAULT_PREFIX_CHARS)
    third = prefix_group([*opening, answer, then, answer, then], DEFAULT_PREFIX_CHARS)
    other = _messages("Conversation 2: my chain skips.")
    assert second is not None and second == third
    assert prefix_group([*other, answer, then], DEFAULT_PREFIX_CHARS) != second
    a_tool = ChatMessage(role="tool", content="{}", tool_call_id="call-1")  # an agent's step
    assert prefix_group([*opening, a_tool], DEFAULT_PREFIX_CHARS) == second
    single = prefix_group(opening, DEFAULT_PREFIX_CHARS)  # one turn: its first characters
    assert single is not None and single == prefix_group(other, DEFAULT_PREFIX_CHARS)


def test_each_turn_of_a_conversation_goes_to_the_partition_of_the_turn_before() -> None:
    """300 conversations of 4 turns under one 1,500-character system prompt, interleaved, on
    8 partitions shared by 2 workers: by the first 512 characters all were one group, spread
    by the load bound, and a turn reached the replica of the turn before by chance (half)."""
    system = ("You are the support assistant of a bicycle shop. " * 40)[:1_500]
    owner = {p: w for w, ps in share(8, {"w0": NO_CLAIM, "w1": NO_CLAIM}).items() for p in ps}
    order = [c for c in range(300) for _ in range(4)]
    random.Random(2).shuffle(order)

    async def eight(topic: str) -> int:
        return 8

    async def main() -> tuple[int, int, int]:
        affinity = PrefixAffinity(DEFAULT_PREFIX_CHARS, eight)
        chats: dict[int, list[dict[str, Any]]] = {}
        before: dict[int, int] = {}
        later = same_partition = same_worker = 0
        for c in order:
            chat = chats.setdefault(c, [{"role": "system", "content": system}])
            turn = len(chat) // 2 + 1
            chat.append({"role": "user", "content": f"Conversation {c}, turn {turn}: " + "?" * 200})
            placed = await affinity.partition(TOPIC, _item(list(chat), f"fp-{c}-{turn}"))
            chat.append({"role": "assistant", "content": "An answer. " * 40})
            if turn >= 3:
                later += 1
                same_partition += placed == before[c]
                same_worker += owner[placed] == owner[before[c]]
            before[c] = placed
        return later, same_partition, same_worker

    later, same_partition, same_worker = asyncio.run(main())
    assert later == 600
    assert same_partition >= 0.75 * later
    assert same_worker >= same_partition


def _tools(prefix: str) -> list[dict[str, Any]]:
    """16 functions, about 7 KB of JSON."""
    described = "Looks up an order, a customer, an invoice or a shipment by its id. " * 4
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    return [
        {
            "type": "function",
            "function": {"name": f"{prefix}_{n}", "description": described, "parameters": schema},
        }
        for n in range(16)
    ]


def test_requests_that_share_a_large_tool_set_share_a_group() -> None:
    """Chat templates show the tools ahead of the messages: an agent's requests share them
    and differ in short messages, which alone were too short to group."""

    def group(tools: list[dict[str, Any]], question: str) -> bytes | None:
        chat = [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": question},
        ]
        body = ChatBody.model_validate({"messages": chat, "tools": tools})
        return prefix_group(body.messages, DEFAULT_PREFIX_CHARS, tools=body.tools)

    shared = _tools("lookup")
    assert len(json.dumps(shared)) > 7_000
    first = group(shared, "Where is order 1234?")
    assert first is not None and first == group(shared, "Who is customer 77?")
    other = group(_tools("find"), "Where is order 1234?")
    assert other is not None and other != first


def test_models_without_a_prefix_cache_are_placed_by_fingerprint() -> None:
    """Their engines reuse no prefix, so a partition of the prefix's only unbalances the pool."""
    plain = ModelSpec(name="smollm2-135m", source="s")
    off = plain.model_copy(update={"engine_args": {"enable_prefix_caching": False}})
    on = plain.model_copy(update={"name": "on", "engine_args": {"enable_prefix_caching": True}})
    assert uncached([plain, on]) == frozenset()
    assert uncached([off, on]) == {"smollm2-135m"}

    async def place(unplaced: frozenset[str]) -> list[int]:
        affinity = PrefixAffinity(DEFAULT_PREFIX_CHARS, _four, uncached=unplaced)
        return [await affinity.partition(TOPIC, _work(f"question {n}")) for n in range(8)]

    assert len(set(asyncio.run(place(frozenset())))) == 1
    by_fingerprint = [ranked(_work(f"question {n}").fingerprint.encode(), 4)[0] for n in range(8)]
    assert asyncio.run(place(uncached([off]))) == by_fingerprint
    assert len(set(by_fingerprint)) > 1
