"""What one fault scenario found: the tally of its requests, and what else was seen."""

from __future__ import annotations

from dataclasses import dataclass, field

from tools.faults.tally import Tally


@dataclass
class Outcome:
    """One row of the report."""

    scenario: str
    """Its name on the command line (`--only`)."""
    fault: str
    """What was done to the stack, in words."""
    tally: Tally | None = None
    """None when the scenario could not run to its end (see `findings`)."""
    notes: list[str] = field(default_factory=list)
    """What happened, for the reader: how many were in flight, how long a restart took."""
    findings: list[str] = field(default_factory=list)
    """What went wrong besides lost and conflicting replies: a process that died, a check
    that failed, the scenario itself failing."""
    figures: dict[str, float] = field(default_factory=dict)
    """Measurements beyond the tally (overload: service rate, peak backlog and memory)."""

    @property
    def failed(self) -> bool:
        """An accepted request lost, a conflicting duplicate, or no tally at all."""
        return self.tally is None or self.tally.lost > 0 or self.tally.conflicting > 0
