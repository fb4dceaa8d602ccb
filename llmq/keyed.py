"""A dict by request, (tenant, correlation_id), that knows the correlation ids it holds: a
reader of llmq.tokens asks by a record's key alone whether a request waited for or a stream
kept is its, before reading it."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TypeVar

from llmq.chat import Key

V = TypeVar("V")


class ByRequest(MutableMapping[Key, V]):
    """A dict by (tenant, correlation_id) that also counts the correlation ids it holds."""

    def __init__(self) -> None:
        self._by_key: dict[Key, V] = {}
        self._ids: dict[str, int] = {}
        """How many keys name each correlation id (one, unless tenants share an id)."""

    def names(self, correlation_id: str) -> bool:
        """Whether a key of any tenant names `correlation_id`."""
        return correlation_id in self._ids

    def __getitem__(self, key: Key) -> V:
        return self._by_key[key]

    def __setitem__(self, key: Key, value: V) -> None:
        if key not in self._by_key:
            self._ids[key[1]] = self._ids.get(key[1], 0) + 1
        self._by_key[key] = value

    def __delitem__(self, key: Key) -> None:
        del self._by_key[key]
        left = self._ids[key[1]] - 1
        if left:
            self._ids[key[1]] = left
        else:
            del self._ids[key[1]]

    def __contains__(self, key: object) -> bool:
        return key in self._by_key

    def __iter__(self) -> Iterator[Key]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)
