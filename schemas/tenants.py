"""Tenant policy: per-tenant rate limits and budgets, configured in one TOML file."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
)

from schemas.request import Identifier
from schemas.tomlfile import load_toml

BudgetPeriod = Literal["day", "month"]
"""A budget's window: the UTC calendar day or the UTC calendar month."""

UNLIMITED = "unlimited"
"""What a TOML file writes for "no limit" (TOML has no null)."""


def _unlimited(value: object) -> object:
    """Read the word "unlimited" as None, so an override can lift a default's limit."""
    return None if value == UNLIMITED else value


PerMinute = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_unlimited)]
Usd = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(_unlimited)]


class TenantLimits(BaseModel):
    """One tenant's limits; None means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: PerMinute = None
    """Requests admitted per minute. A token bucket of this size refilled continuously at
    this rate per minute, so a quiet tenant may burst up to a minute's worth at once."""
    tokens_per_minute: PerMinute = None
    """Estimated tokens (prompt + max_tokens) admitted per minute, as a bucket like the above.
    A request estimated above it can never be served and is refused outright."""
    budget_usd: Usd = None
    """USD a tenant may spend per `budget_period`, as metered; 0 suspends the tenant."""
    budget_period: BudgetPeriod = "day"
    """The budget's window: the UTC calendar "day" or "month"."""


class TenantPolicy(BaseModel):
    """Default limits and per-tenant overrides; an override inherits what it leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: TenantLimits = TenantLimits()
    """Limits of every tenant without an override (by default: none)."""
    tenants: dict[Identifier, TenantLimits] = Field(default_factory=dict)
    """Overrides by tenant; a field left out takes the default's value."""
    _resolved: dict[str, TenantLimits] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        """Merge each override into the default once, not on every request."""
        for tenant, override in self.tenants.items():
            self._resolved[tenant] = self.default.model_copy(
                update=override.model_dump(exclude_unset=True)
            )

    def limits(self, tenant: str) -> TenantLimits:
        """The limits that apply to `tenant`."""
        return self._resolved.get(tenant, self.default)

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """The policy in a TOML file, or no limits at all when `path` is None."""
        if path is None:
            return cls()
        return load_toml(cls, path, "tenants file", "LLMQ_TENANTS_FILE")


def period_id(period: BudgetPeriod, at: float) -> str:
    """The UTC window that `at` falls in: "2026-11-21" for a day, "2026-11" for a month."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_end(period: BudgetPeriod, at: float) -> float:
    """When the UTC window that `at` falls in ends (Unix time): the budget resets then."""
    moment = datetime.fromtimestamp(at, UTC)
    start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return start.timestamp() + 86_400
    days = calendar.monthrange(moment.year, moment.month)[1]
    return start.replace(day=1).timestamp() + days * 86_400
