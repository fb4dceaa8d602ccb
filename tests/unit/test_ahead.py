"""EmbedAhead: a request's embedding starts at admission only where dedupe will look it up."""

from __future__ import annotations

import json

import pytest
from aiokafka.partitioner import DefaultPartitioner

from schemas.catalog import Catalog
from schemas.names import REQUESTS, REQUESTS_KEYED
from schemas.work import WorkItem
from streams.admit import admit
from streams.ahead import EmbedAhead, keyed_partition
from streams.semantic import semantic_key

PARTITIONS = 4


class Similar:
    """Records what it was asked to embed soon."""

    def __init__(self) -> None:
        self.soon_asked: list[tuple[str, str]] = []

    def soon(self, scope: str, text: str) -> None:
        self.soon_asked.append((scope, text))


CATALOG = Catalog.builtin()


def _work(text: str, temperature: float = 0.0) -> WorkItem:
    raw = {
        "correlation_id": f"c-{len(text)}",
        "tenant": "acme",
        "body": {"messages": [{"role": "user", "content": text}], "temperature": temperature},
    }
    work = admit(json.dumps(raw).encode(), CATALOG)
    assert isinstance(work, WorkItem)
    return work


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_keyed_partition_is_the_producers_choice(partitions: int) -> None:
    choose = DefaultPartitioner()
    every = list(range(partitions))
    for n in range(200):
        fingerprint = f"{n:064x}"
        want = choose(fingerprint.encode(), every, every)
        assert keyed_partition(fingerprint, partitions) == want


def test_the_embedding_starts_where_its_keyed_partition_is_consumed() -> None:
    works = [_work(f"What is {n} squared?") for n in range(40)]
    partitions = {keyed_partition(w.fingerprint, PARTITIONS) for w in works}
    assert {0, 1} <= partitions  # the test needs both kinds
    held = {(REQUESTS_KEYED, 0), (REQUESTS, 1)}  # partition 1 of another topic: not enough
    similar = Similar()
    ahead = EmbedAhead(CATALOG, similar, lambda: held, PARTITIONS)
    for work in works:
        ahead(work)
    here = [w for w in works if keyed_partition(w.fingerprint, PARTITIONS) == 0]
    assert here
    scopes = [CATALOG.cache_scope(w.route) for w in here]
    assert similar.soon_asked == [
        semantic_key(w.request, s) for w, s in zip(here, scopes, strict=True)
    ]


def test_a_request_the_semantic_cache_does_not_take_is_not_embedded() -> None:
    similar = Similar()
    ahead = EmbedAhead(
        CATALOG, similar, lambda: {(REQUESTS_KEYED, p) for p in range(PARTITIONS)}, 4
    )
    ahead(_work("Tell me a story.", temperature=0.9))  # sampled: never cached
    assert similar.soon_asked == []
    ahead(_work("Tell me a story."))
    [(_, text)] = similar.soon_asked
    assert text == "Tell me a story."


def test_a_failure_gives_no_head_start_and_does_not_reach_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def not_started() -> set[tuple[str, int]]:
        raise RuntimeError("the consumer is not started")

    similar = Similar()
    EmbedAhead(CATALOG, similar, not_started, PARTITIONS)(_work("Tell me a story."))
    assert similar.soon_asked == []
    assert "no head start" in caplog.text
