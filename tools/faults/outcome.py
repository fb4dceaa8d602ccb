"""What one fault scenario found: the tally of its requests, and what else was seen."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from tools.faults.tally import Tally


class Kind(StrEnum):
    """Whether a finding fails the run."""

    BROKEN = "broken"
    """A guarantee broke, or its check could not be made: the run fails."""
    TIMING = "timing"
    """Depends on the machine's timing (a wait before the fault that ran out, a decision that
    came late): shown, but a slow machine is no broken guarantee, so the run does not fail."""


@dataclass(frozen=True)
class Finding:
    """Something a scenario found besides lost and conflicting replies."""

    kind: Kind
    text: str


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
    findings: list[Finding] = field(default_factory=list)
    """What went wrong besides lost and conflicting replies: a process that died, a check
    that failed, the scenario itself failing (broken); a wait that ran out (timing)."""
    figures: dict[str, float] = field(default_factory=dict)
    """Measurements beyond the tally (overload: service rate, peak backlog and memory)."""

    def broken(self, text: str) -> None:
        """A guarantee broke: the run fails."""
        self.findings.append(Finding(Kind.BROKEN, text))

    def timing(self, text: str) -> None:
        """An observation that depends on the machine's timing: shown, not failed."""
        self.findings.append(Finding(Kind.TIMING, text))

    def reached(self, held: bool, what: str) -> None:
        """A wait before the fault for `what`: when it ran out the fault came anyway, on a
        stack that may not have been in the state the scenario claims to test."""
        if not held:
            self.timing(f"{what} was not reached before the fault: not tested as claimed")

    @property
    def failed(self) -> bool:
        """An accepted request lost, a conflicting duplicate, no tally, or a broken
        guarantee."""
        return (
            self.tally is None
            or self.tally.lost > 0
            or self.tally.conflicting > 0
            or any(f.kind is Kind.BROKEN for f in self.findings)
        )
