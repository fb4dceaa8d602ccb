"""What makes a pool the size the policy asks for."""

from __future__ import annotations

from typing import Protocol


class Actuator(Protocol):
    """Runs `replicas` workers of `model` (starting with SIGTERM-drained stops)."""

    async def scale(self, model: str, replicas: int) -> None: ...


class Exported:
    """In a cluster the figure is only exported: KEDA reads llmq_autoscaler_desired_replicas
    from Prometheus and sizes each pool's Deployment."""

    async def scale(self, model: str, replicas: int) -> None:
        """Nothing to do here: the gauge is the output."""
