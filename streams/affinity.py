"""Prefix affinity: which partition of its work topic a work record goes to.

Requests whose prompts start alike (a system prompt, few-shot examples, a document) go to
the same partition, so the replica that owns it reuses the prompt's KV blocks from vLLM's
prefix cache instead of computing them again; llm-d's router does this for HTTP, here it is
done with partitions. A load bound keeps a hot prefix from unbalancing the pool: a partition
that took more than its share of the recent records sends the next one to the prefix's
second choice (consistent hashing with bounded loads, Mirrokni et al., arXiv 1608.01350).
A conversation's later turns are grouped by its opening instead, so each turn goes where the
turn before it left the conversation's history.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence

from schemas.catalog import ModelSpec
from schemas.request import ChatMessage
from schemas.tools import Tool, tool_dicts
from schemas.work import WorkItem

DEFAULT_PREFIX_CHARS = 512
"""Characters of the prompt that name its prefix group: about 128 tokens, the least whose
reuse saves a prefill worth keeping a request off the least loaded replica."""
WINDOW_PER_PARTITION = 64
"""Recent records of a topic over which the partitions' shares are counted, per partition."""
FLOOR_PER_PARTITION = 8
"""Fewer records than this per partition are counted as this many, so the first records of a
prefix are not scattered for want of history."""
SLACK = 1.25
"""A partition may take up to this many times an even share of the records counted."""


def prefix_group(
    messages: Sequence[ChatMessage],
    chars: int,
    tenant: str | None = None,
    tools: list[Tool] | None = None,
) -> bytes | None:
    """The prompt's group, or None when the prompt (its tools' JSON, then its messages' roles
    and contents, in order) is no longer than `chars`: nothing after a shared part to share
    it with. The tools come first, as chat templates show them: agents' requests share a
    large tool set and differ in short messages. A prompt that goes on past its first user
    message (an earlier turn's answer, a tool's result) is a conversation's later turn: its
    group is its opening, through that first user message, the same for every turn, so each
    turn goes where the turn before left the history (a long system prompt that every
    conversation shares would make them all one group, spread over the pool). Any other
    prompt's group is its first `chars` characters. With `tenant`, the group is that
    tenant's alone: engines that keep tenants' cached prefixes apart reuse a prefix only
    within its tenant."""
    shown = "" if tools is None else f"tools\n{json.dumps(tool_dicts(tools))}\n"
    texts = [f"{message.role}\n{message.content}\n" for message in messages]
    text = shown + "".join(texts)
    if chars <= 0 or len(text) <= chars:
        return None
    users = (n for n, message in enumerate(messages) if message.role == "user")
    first = next(users, len(messages))
    later_turn = first + 1 < len(messages)
    named = shown + "".join(texts[: first + 1]) if later_turn else text[:chars]
    digest = hashlib.blake2b(digest_size=16)
    if tenant is not None:
        name = tenant.encode()
        digest.update(len(name).to_bytes(4, "big") + name)
    digest.update(named.encode())
    return digest.digest()


def uncached(models: Iterable[ModelSpec]) -> frozenset[str]:
    """The models whose engine_args turn vLLM's prefix cache off: their records gain nothing
    from a partition of their prefix's, so they are placed by fingerprint, evenly."""
    return frozenset(m.name for m in models if m.engine_args.get("enable_prefix_caching") is False)


def ranked(group: bytes, partitions: int) -> list[int]:
    """The partitions in `group`'s order of preference (rendezvous hashing): the same for
    every stream-processor instance, and a full partition's overflow is spread over the
    others rather than all sent to its neighbour."""

    def score(partition: int) -> bytes:
        return hashlib.blake2b(group + partition.to_bytes(4, "big"), digest_size=8).digest()

    return sorted(range(partitions), key=score, reverse=True)


class Balance:
    """The bound on one topic's partitions: each may take at most SLACK times an even share
    of the last WINDOW_PER_PARTITION records per partition (of at least
    FLOOR_PER_PARTITION, while there are fewer)."""

    def __init__(self, partitions: int, slack: float = SLACK) -> None:
        self.partitions = partitions
        self._recent: deque[int] = deque(maxlen=WINDOW_PER_PARTITION * partitions)
        self._counts = [0] * partitions
        self._slack = slack

    def place(self, preference: Sequence[int]) -> int:
        """The first partition in `preference` still under the bound (the least loaded when
        none is, which only a slack below 1 allows); counted in the window."""
        if len(self._recent) == self._recent.maxlen:
            self._counts[self._recent.popleft()] -= 1
        counted = max(len(self._recent) + 1, FLOOR_PER_PARTITION * self.partitions)
        cap = self._slack * counted / self.partitions
        chosen = next((p for p in preference if self._counts[p] + 1 <= cap), None)
        if chosen is None:
            chosen = min(preference, key=self._counts.__getitem__)
        self._recent.append(chosen)
        self._counts[chosen] += 1
        return chosen


class PrefixAffinity:
    """Chooses each work record's partition: by its prompt's prefix group when the prompt is
    longer than `chars`, by its fingerprint otherwise (and for the `uncached` models, whose
    engines keep no prefix cache), within each topic's Balance. For the `salted` models
    (engines that keep each tenant's cached prefixes apart) each tenant's records of a prefix
    are a group of their own: one tenant's records gain nothing from another's partition,
    and many tenants sending one prefix spread over the pool."""

    def __init__(
        self,
        chars: int,
        partitions: Callable[[str], Awaitable[int]],
        salted: frozenset[str] = frozenset(),
        uncached: frozenset[str] = frozenset(),
    ) -> None:
        self._chars = chars
        self._partitions = partitions
        self._salted = salted
        self._uncached = uncached
        self._balances: dict[str, Balance] = {}

    async def partition(self, topic: str, item: WorkItem) -> int:
        """The partition of `topic` for `item`."""
        count = await self._partitions(topic)
        balance = self._balances.get(topic)
        if balance is None or balance.partitions != count:
            balance = self._balances[topic] = Balance(count)
        group = None
        if item.model not in self._uncached:
            tenant = item.request.tenant if item.model in self._salted else None
            body = item.request.body
            group = prefix_group(body.messages, self._chars, tenant, body.tools)
        return balance.place(ranked(group or item.fingerprint.encode(), count))
