"""Embedding ahead: the semantic cache's embedding of a request starts at admission, so that
it overlaps the request's trip through llmq.requests.keyed to the dedupe stage that looks
it up, when that stage runs in this process."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Protocol

from aiokafka.partitioner import murmur2

from schemas.catalog import Catalog
from schemas.names import REQUESTS_KEYED
from schemas.work import WorkItem
from streams.semantic import semantic_key

log = logging.getLogger(__name__)


class Soon(Protocol):
    """The semantic cache (SemanticCache in production)."""

    def soon(self, scope: str, text: str) -> None: ...


def keyed_partition(fingerprint: str, partitions: int) -> int:
    """The partition of llmq.requests.keyed a fingerprint's record lands on: what the
    producer's default partitioner chooses for the key (murmur2, as Kafka's Java client),
    the topic having `partitions` partitions, as the coalescing table's co-partitioning
    requires too; streams/app.py sets no other partitioner for faust's producer."""
    return int(murmur2(fingerprint.encode()) & 0x7FFFFFFF) % partitions


class EmbedAhead:
    """Called by admission for a request on its way to dedupe (not answered from the exact
    cache): starts its embedding if this process holds its keyed partition. Elsewhere the
    vector would be computed for nobody. Never raises: a head start must not fail a request."""

    def __init__(
        self,
        catalog: Catalog,
        similar: Soon,
        assigned: Callable[[], Collection[tuple[str, int]]],
        partitions: int,
    ) -> None:
        """`assigned`: the (topic, partition) pairs this process consumes now."""
        self._catalog = catalog
        self._similar = similar
        self._assigned = assigned
        self._partitions = partitions

    def __call__(self, work: WorkItem) -> None:
        try:
            partition = keyed_partition(work.fingerprint, self._partitions)
            if (REQUESTS_KEYED, partition) not in self._assigned():
                return
            key = semantic_key(work.request, self._catalog.cache_scope(work.route))
            if key is not None:
                self._similar.soon(*key)
        except Exception:
            log.exception("no head start for %s's embedding", work.request.correlation_id)
