"""Priority lanes: each model has one work topic per lane."""

from __future__ import annotations

from enum import StrEnum


class Lane(StrEnum):
    """Interactive is served before standard, standard before batch."""

    INTERACTIVE = "interactive"
    STANDARD = "standard"
    BATCH = "batch"

    @property
    def priority(self) -> int:
        """vLLM's scheduler priority: a lower value is served first."""
        return list(Lane).index(self)
