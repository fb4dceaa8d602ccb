"""Tenant policy: per-tenant rate limits and budgets, and the front door's API keys, in one
TOML file."""

from __future__ import annotations

import calendar
import hashlib
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
)

from schemas.catalog import Catalog
from schemas.request import ChatBody, Identifier
from schemas.tomlfile import load_toml

BudgetPeriod = Literal["day", "month"]
"""A budget's window: the UTC calendar day or the UTC calendar month."""

NANO = 1e9
"""Budgets hold whole nano-dollars in Redis: integers add and subtract without drift."""

UNLIMITED = "unlimited"
"""What a TOML file writes for "no limit" (TOML has no null)."""


def _unlimited(value: object) -> object:
    """Read the word "unlimited" as None, so an override can lift a default's limit."""
    return None if value == UNLIMITED else value


PerMinute = Annotated[Annotated[int, Field(ge=1)] | None, BeforeValidator(_unlimited)]
Usd = Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(_unlimited)]
KeyHash = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
"""How the file holds an API key: never the key, only `sha256:` and its SHA-256 in hex."""
KEY_PREFIX = "llmq-"


class TenantLimits(BaseModel):
    """One tenant's limits; None means unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: PerMinute = None
    """A bucket of requests: it holds this many and refills continuously at this many a
    minute; each request takes one (a call of n choices n, at once). The rate over minutes,
    not a cap per minute: a full bucket admits this many at once and then its refill, up to
    about twice this many within one 60 s window."""
    tokens_per_minute: PerMinute = None
    """A bucket like the above of estimated tokens (prompt + max_tokens), each request's
    taken in full when admitted. A request (or a call's choices together) estimated above it
    never fits and is refused outright (invalid_request)."""
    budget_usd: Usd = None
    """USD a tenant may spend per `budget_period`, as metered; 0 suspends the tenant."""
    budget_period: BudgetPeriod = "day"
    """The budget's window: the UTC calendar "day" or "month"."""
    budget_when_unavailable: Literal["admit", "refuse"] = "admit"
    """While the budget cannot be read (Redis down or slow): "admit" unchecked (the default,
    so an outage of Redis does not stop the service) or "refuse" with budget_unavailable."""

    def choices_never_fit(self, tenant: str, n: int, each: int) -> str | None:
        """Why the rate buckets can never admit a call's `n` choices of `each` estimated
        tokens together (they are charged at once), or None: the front door's refusal before
        it publishes, and admission's of a record that names its call."""
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        if rpm is not None and n > rpm:
            return (
                f"n is {n}: each choice is a request, and tenant {tenant} may make at most "
                f"{rpm} requests per minute; ask for at most {rpm} choices"
            )
        if tpm is not None and each <= tpm < n * each:
            return (
                f"n is {n}: its choices need about {n * each} tokens ({each} each: prompt "
                f"estimate + max_tokens), and tenant {tenant} may use at most {tpm} tokens per "
                f"minute; ask for at most {tpm // each} choices or lower max_tokens"
            )
        return None


class TenantPolicy(BaseModel):
    """Default limits and per-tenant overrides; an override inherits what it leaves out."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    default: TenantLimits = TenantLimits()
    """Limits of every tenant without an override (by default: none)."""
    tenants: dict[Identifier, TenantLimits] = Field(default_factory=dict)
    """Overrides by tenant; a field left out takes the default's value."""
    api_keys: dict[KeyHash, Identifier] = Field(default_factory=dict)
    """The front door's API keys, hashed, and the tenant each speaks for (`llmq keys new`)."""
    _resolved: dict[str, TenantLimits] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: object, /) -> None:
        """Merge each override into the default once, not on every request."""
        for tenant, override in self.tenants.items():
            self._resolved[tenant] = self.default.model_copy(
                update=override.model_dump(exclude_unset=True)
            )

    def tenant_of(self, api_key: str) -> str | None:
        """The tenant an API key speaks for; None for a key that is not in the file."""
        return self.api_keys.get(key_hash(api_key))

    def limits(self, tenant: str) -> TenantLimits:
        """The limits that apply to `tenant`."""
        return self._resolved.get(tenant, self.default)

    @classmethod
    def load(cls, path: Path | None) -> Self:
        """The policy in a TOML file, or no limits at all when `path` is None."""
        if path is None:
            return cls()
        return load_toml(cls, path, "tenants file", "LLMQ_TENANTS_FILE")


def key_hash(api_key: str) -> str:
    """How an API key is written in the tenants file. Keys are long random strings, so a
    plain SHA-256 keeps them safe at rest; the file never holds a key itself."""
    return "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()


def new_key() -> str:
    """A new API key: 256 random bits."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


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


def worst_cost(body: ChatBody, models: Iterable[str], catalog: Catalog) -> float:
    """The most generating `body` on each of `models` in turn can cost (a model the catalog
    lacks: nothing): the bound on its prompt's tokens, and max_tokens (capped by the model's
    context) of output, at the model's prices. What a budget holds (docs/budgets.md)."""
    prompt = body.prompt_token_bound()
    specs = [spec for spec in map(catalog.get, models) if spec is not None]
    return sum(spec.cost(prompt, min(body.max_tokens, spec.max_model_len)) for spec in specs)


def usd(amount: float) -> str:
    """Dollars as a person reads them: cents for real money, significant digits below $1."""
    return f"${amount:,.2f}" if amount >= 1 or amount == 0 else f"${amount:.3g}"
