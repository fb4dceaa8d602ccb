"""A request's route through the model catalog: the models to try, and what happened."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

AUTO = "auto"
"""The model name that asks llmq to choose the model (and to cascade)."""


class Route(BaseModel):
    """Chosen by the stream processor, carried by the work item and its completion.

    The model now serving is `chain[len(tried)]`; the next one after a low-confidence
    answer (cascade) or an engine failure (fallback) is the one after it. Fields it does not
    know are kept and written back: a worker older than the stream processor hands its state
    back whole.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    requested: str
    """What the app asked for: a model name, or "auto"."""
    chain: list[str] = Field(min_length=1)
    """Models to try, in order: the first serves, the rest take over on escalation or failure."""
    cascade: bool = False
    """Escalate to the next model when the answer's mean token log-probability is low."""
    tried: list[str] = Field(default_factory=list)
    """Models that already answered (too unsure) or failed, in order."""
    escalated: bool = False
    """A cheaper model's answer was not confident enough, so a bigger one answered."""
    fell_back: bool = False
    """A model's engine failed, or its context could not take the prompt, so a later model of
    the chain answered."""
    failed_over: bool = False
    """The chain moved on because a model's engine failed (FALLBACK_CODES: an error, not
    available, timed out), a passing condition: its answer is not cached (streams/complete.py).
    Unlike `fell_back`, not set where a model's context could not take the prompt, at
    admission or after the engine's refusal. False in a record of a writer before it."""
    experiment: str | None = None
    """The A/B test the request takes part in (the catalog's experiments), if any."""
    arm: str | None = None
    """Its arm of that experiment."""

    @property
    def cached_as(self) -> str:
        """The model name its answers are cached under: what was requested, and the arm,
        so that two arms never share an answer."""
        return (
            self.requested if self.arm is None else f"{self.requested}/{self.experiment}/{self.arm}"
        )

    @property
    def current(self) -> str:
        """The model serving this attempt."""
        return self.chain[min(len(self.tried), len(self.chain) - 1)]

    @property
    def remaining(self) -> list[str]:
        """Models still to try after the current one."""
        return self.chain[len(self.tried) + 1 :]

    def advance(self, *, escalated: bool, skip: int = 0, failed: bool = False) -> Route:
        """The route for the next model of the chain, after an escalation or a failure
        (`failed`: of the engine, `failed_over`); `skip` models that would come first are left
        out of the chain, untried."""
        done = len(self.tried) + 1
        return self.model_copy(
            update={
                "chain": [*self.chain[:done], *self.chain[done + skip :]],
                "tried": [*self.tried, self.current],
                "escalated": self.escalated or escalated,
                "fell_back": self.fell_back or not escalated,
                "failed_over": self.failed_over or failed,
            }
        )
