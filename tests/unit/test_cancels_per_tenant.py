"""A worker's memory of cancellations, shared by tenants: one tenant's flood forgets only its
own oldest, never another tenant's few (whose queued work would then run, billed for nobody),
and the memory stays bounded in all."""

from __future__ import annotations

import pytest

from schemas.stream import Cancel
from workers.cancels import REMEMBERED, Cancellations

pytestmark = pytest.mark.timeout(30)

NOW = 1000.0


def _cancel(tenant: str, cid: str) -> Cancel:
    return Cancel(correlation_id=cid, tenant=tenant, at=NOW)


def test_a_flood_of_one_tenant_forgets_only_its_own_cancels() -> None:
    """Bob's one cancel outlives REMEMBERED of mallory's (16 calls dropped at once, of 16
    choices each, send 256): mallory forgets her oldest, one past the bound."""
    cancellations = Cancellations()
    cancellations.add(_cancel("bob", "victim"), NOW)
    for n in range(REMEMBERED):
        cancellations.add(_cancel("mallory", f"x{n}"), NOW)
    assert cancellations.cancelled("bob", "victim") is not None
    assert cancellations.cancelled("mallory", "x0") is None  # the one past the bound
    assert cancellations.cancelled("mallory", "x1") is not None


def test_past_the_bound_the_tenant_holding_most_forgets_first() -> None:
    """A tenant within its share that adds to a full memory takes the room from the one that
    holds the most, not from the oldest cancel of all (another tenant's)."""
    cancellations = Cancellations(limit=6)
    cancellations.add(_cancel("bob", "b0"), NOW)  # the oldest of all
    for n in range(5):
        cancellations.add(_cancel("mallory", f"m{n}"), NOW)
    for n in range(1, 3):
        cancellations.add(_cancel("bob", f"b{n}"), NOW)
    assert [cancellations.cancelled("bob", f"b{n}") is not None for n in range(3)] == [True] * 3
    assert [cancellations.cancelled("mallory", f"m{n}") is not None for n in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
