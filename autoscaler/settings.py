"""The autoscaler's settings (LLMQ_* environment variables)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from autoscaler.policy import Targets
from schemas.lanes import Lane
from schemas.settings import ServiceSettings


class AutoscalerSettings(ServiceSettings):
    """One autoscaler for every model of the catalog. The defaults are a cluster's (minutes);
    `llmq local up` shortens the windows so the loop shows on one machine."""

    autoscaler_tick_s: float = Field(default=5.0, gt=0, le=300)
    """How often it looks at the backlog and decides (LLMQ_AUTOSCALER_TICK_S)."""
    drain_interactive_s: float = Field(default=10.0, gt=0)
    """Waiting interactive work should be done within this long (LLMQ_DRAIN_INTERACTIVE_S)."""
    drain_standard_s: float = Field(default=120.0, gt=0)
    """Likewise for the standard lane (LLMQ_DRAIN_STANDARD_S)."""
    drain_batch_s: float = Field(default=900.0, gt=0)
    """Likewise for the batch lane (LLMQ_DRAIN_BATCH_S)."""
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest workers per model; 0 lets an idle pool go to zero (LLMQ_MIN_REPLICAS)."""
    max_replicas: int = Field(default=4, ge=1, le=1000)
    """Most workers per model, below the partitions of its lane topics (LLMQ_MAX_REPLICAS)."""
    stabilization_s: float = Field(default=300.0, ge=0)
    """A smaller pool only once every figure of this window was smaller
    (LLMQ_STABILIZATION_S)."""
    idle_s: float = Field(default=600.0, ge=0)
    """With LLMQ_MIN_REPLICAS=0: how long without work before the last worker goes
    (LLMQ_IDLE_S)."""
    tokens_per_s: float = Field(default=600.0, gt=0)
    """What one worker serves, in estimated tokens a second, until the autoscaler has
    measured it on a busy pool (LLMQ_TOKENS_PER_S)."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"LLMQ_MIN_REPLICAS ({self.min_replicas}) must not exceed "
                f"LLMQ_MAX_REPLICAS ({self.max_replicas})"
            )
        return self

    def targets(self) -> Targets:
        """The policy's targets."""
        drain = {
            Lane.INTERACTIVE: self.drain_interactive_s,
            Lane.STANDARD: self.drain_standard_s,
            Lane.BATCH: self.drain_batch_s,
        }
        return Targets(
            drain,
            min_replicas=self.min_replicas,
            max_replicas=self.max_replicas,
            stabilization_s=self.stabilization_s,
            idle_s=self.idle_s,
        )
