"""Counting a scenario's requests against the records on its reply topic: what was lost,
what came twice, and how soon answers flowed again after the fault."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

LOST_IDS_KEPT = 20
"""How many lost correlation ids a tally names (for the logs); the count is exact."""


@dataclass(frozen=True)
class Request:
    """One request the load sent; times are time.monotonic() of the harness."""

    correlation_id: str
    sent_at: float
    accepted: bool
    """The broker acknowledged it: from then on llmq owes it exactly one reply."""


@dataclass(frozen=True)
class Reply:
    """One record read from the reply topic."""

    at: float
    correlation_id: str | None
    """None for a record that is not a readable result."""
    status: str
    error_code: str | None = None
    text: str | None = None
    cache: str = "none"

    def same_answer(self, other: Reply) -> bool:
        """Whether two replies tell the app the same thing (the cache status may differ)."""
        return (self.status, self.error_code, self.text) == (
            other.status,
            other.error_code,
            other.text,
        )


@dataclass(frozen=True)
class Tally:
    """A scenario's requests and replies, counted."""

    sent: int
    accepted: int
    replies: int
    """Accepted requests with at least one reply."""
    lost: int
    """Accepted requests without any reply."""
    duplicates: int
    """Reply records beyond the first for a request."""
    conflicting: int
    """Duplicates whose status, error code or answer text differ from the first reply."""
    errors: dict[str, int] = field(default_factory=dict)
    """Error codes of the first replies."""
    strays: int = 0
    """Reply records for no accepted request of this scenario (unreadable, or to a send
    that was never acknowledged)."""
    recovery_s: float | None = None
    """From the fault to the first ok reply to a request sent after it."""
    generations: int = 0
    """Engine generations for accepted requests (their metering events): fewer than replies
    where copies coalesced or hit the cache, more where a request was generated again."""
    regenerated: int = 0
    """Accepted requests generated more than once (redelivered work)."""
    lost_ids: tuple[str, ...] = ()
    """The first LOST_IDS_KEPT lost correlation ids."""

    @property
    def not_accepted(self) -> int:
        """Sends the broker never acknowledged: not owed a reply, so not lost."""
        return self.sent - self.accepted


def count(
    requests: Sequence[Request],
    replies: Sequence[Reply],
    fault_at: float | None = None,
    generated: Sequence[str] = (),
) -> Tally:
    """Tally replies (in arrival order) against requests; `fault_at` dates the fault;
    `generated` holds the correlation id of each engine generation."""
    accepted = {r.correlation_id: r for r in requests if r.accepted}
    first: dict[str, Reply] = {}
    duplicates = conflicting = strays = 0
    for reply in replies:
        cid = reply.correlation_id
        if cid is None or cid not in accepted:
            strays += 1
        elif cid not in first:
            first[cid] = reply
        else:
            duplicates += 1
            conflicting += not reply.same_answer(first[cid])
    lost = [cid for cid in accepted if cid not in first]
    errors = Counter(r.error_code or "unknown" for r in first.values() if r.status != "ok")
    generations = Counter(cid for cid in generated if cid in accepted)
    return Tally(
        sent=len(requests),
        accepted=len(accepted),
        replies=len(first),
        lost=len(lost),
        duplicates=duplicates,
        conflicting=conflicting,
        errors=dict(sorted(errors.items())),
        strays=strays,
        recovery_s=_recovery(accepted, first, fault_at),
        generations=generations.total(),
        regenerated=sum(n > 1 for n in generations.values()),
        lost_ids=tuple(lost[:LOST_IDS_KEPT]),
    )


def _recovery(
    accepted: dict[str, Request], first: dict[str, Reply], fault_at: float | None
) -> float | None:
    """Seconds from the fault to the first ok reply to a request sent after it."""
    if fault_at is None:
        return None
    times = [
        reply.at
        for cid, reply in first.items()
        if reply.status == "ok" and accepted[cid].sent_at >= fault_at
    ]
    return min(times) - fault_at if times else None
