"""Budget alerts: what an app reads on llmq.alerts when a tenant nears or reaches its budget."""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.request import SCHEMA_VERSION
from schemas.tenants import BudgetPeriod


class BudgetAlert(BaseModel):
    """A tenant crossed `threshold` of its budget: sent once per threshold and period."""

    model_config = ConfigDict(frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    tenant: str
    threshold: float = Field(gt=0, le=1)
    """0.5, 0.8 or 1.0 of the budget."""
    period: BudgetPeriod
    period_id: str
    """The UTC day ("2026-11-30") or month ("2026-11") the budget is for."""
    spent_usd: float = Field(ge=0)
    budget_usd: float = Field(ge=0)
    reason: str
    """What crossed it: spend, or (at 1.0) a request refused because what is left of the
    budget cannot pay for its worst case."""
    at: float = Field(default_factory=time.time)
