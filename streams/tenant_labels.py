"""The `tenant` label of the stream processor's metrics, bounded: Kafka apps may name any
tenant (end users' ids, say), and every label value is a set of series Prometheus keeps."""

from __future__ import annotations

from typing import Self

from schemas.tenants import TenantPolicy

DEFAULT_LIMIT = 100
"""Tenants not named in the tenants file that get a label value of their own, per process."""
OTHER = "other"
"""The label value of every tenant past the limit (`llmq costs` still tells them apart),
and of a tenant named "other"."""


class TenantLabels:
    """A tenant named in the tenants file keeps its name, as do the first `limit` others
    this process labels; the rest are OTHER."""

    def __init__(self, named: set[str], limit: int = DEFAULT_LIMIT) -> None:
        self._named = frozenset(named)
        self._limit = limit
        self._seen: set[str] = set()
        """The tenants not named that have a label value of their own (at most `limit`)."""

    @classmethod
    def of(cls, policy: TenantPolicy, limit: int) -> Self:
        """The tenants the file names: those with limits of their own, those of its API keys."""
        return cls({*policy.tenants, *policy.api_keys.values()}, limit)

    def label(self, tenant: str) -> str:
        """The tenant's label value."""
        if tenant in self._named or tenant in self._seen:
            return tenant
        if len(self._seen) < self._limit:
            self._seen.add(tenant)
            return tenant
        return OTHER
