"""Tenant policy: TOML files, inheritance from the default, errors, and UTC budget periods."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from schemas.tenants import TenantLimits, TenantPolicy, key_hash, new_key, period_end, period_id

EXAMPLE = Path(__file__).parents[2] / "examples" / "tenants.toml"


def _at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_no_file_means_no_limits() -> None:
    policy = TenantPolicy.load(None)
    assert policy.limits("anyone") == TenantLimits()
    limits = policy.limits("anyone")
    assert limits.requests_per_minute is None
    assert limits.tokens_per_minute is None
    assert limits.budget_usd is None


def test_the_example_file_loads_and_overrides_inherit_the_default() -> None:
    policy = TenantPolicy.load(EXAMPLE)
    assert policy.limits("someone") == TenantLimits(
        requests_per_minute=600, tokens_per_minute=200_000, budget_usd=5.0, budget_period="day"
    )
    assert policy.limits("acme") == TenantLimits(
        requests_per_minute=60, tokens_per_minute=200_000, budget_usd=5.0, budget_period="day"
    )
    assert policy.limits("bigcorp") == TenantLimits(
        requests_per_minute=600,
        tokens_per_minute=2_000_000,
        budget_usd=1_000.0,
        budget_period="month",
        budget_when_unavailable="refuse",
    )
    assert policy.limits("batch.internal") == TenantLimits(budget_period="day")


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[default]\nrequests_per_minute = 0", "requests_per_minute"),
        ("[default]\ntokens_per_minute = -5", "tokens_per_minute"),
        ("[default]\nbudget_usd = -1.0", "budget_usd"),
        ('[default]\nbudget_period = "week"', "budget_period"),
        ('[default]\nrequests_per_minute = "lots"', "requests_per_minute"),
        ("[default]\nrequests_per_mintue = 5", "requests_per_mintue"),
        ('[tenants."has space"]\nrequests_per_minute = 5', "has space"),
        ("[limits]\nrequests_per_minute = 5", "limits"),
        ("[default\n", "Expected ']'"),
    ],
)
def test_invalid_files_say_what_is_wrong(tmp_path: Path, toml: str, problem: str) -> None:
    path = tmp_path / "tenants.toml"
    path.write_text(toml)
    with pytest.raises(ValueError, match=f"tenants file {path} is invalid") as caught:
        TenantPolicy.load(path)
    assert problem in str(caught.value)


def test_an_api_key_pasted_for_its_hash_is_not_quoted(tmp_path: Path) -> None:
    """The refusal is logged: it names the table and the problem, never the key."""
    key = new_key()
    path = tmp_path / "tenants.toml"
    path.write_text(f'[api_keys]\n"{key}" = "acme"\n"{key_hash(key)}" = "a b"\n')
    with pytest.raises(ValueError, match="api_keys") as caught:
        TenantPolicy.load(path)
    said = str(caught.value)
    assert "sha256:" in said  # the pattern a key must have
    assert key[:12] not in said
    assert key_hash(key)[:16] not in said
    assert said.count("'(a key)'") == 2  # both entries' errors


def test_a_missing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"does not exist \(LLMQ_TENANTS_FILE\)"):
        TenantPolicy.load(tmp_path / "nope.toml")


def test_a_directory_in_place_of_the_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot read tenants file .* \(LLMQ_TENANTS_FILE\)"):
        TenantPolicy.load(tmp_path)  # a mount of the wrong thing


def test_zero_budget_is_allowed_and_limits_are_frozen() -> None:
    limits = TenantLimits(budget_usd=0)
    assert limits.budget_usd == 0
    with pytest.raises(ValidationError):
        limits.budget_usd = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("moment", "day", "month", "day_end", "month_end"),
    [
        ("2026-11-21T13:45:00", "2026-11-21", "2026-11", "2026-11-22", "2026-12-01"),
        ("2026-11-30T23:59:59", "2026-11-30", "2026-11", "2026-12-01", "2026-12-01"),
        ("2026-12-31T00:00:00", "2026-12-31", "2026-12", "2027-01-01", "2027-01-01"),
        ("2028-02-29T12:00:00", "2028-02-29", "2028-02", "2028-03-01", "2028-03-01"),
        ("2027-02-01T00:00:00", "2027-02-01", "2027-02", "2027-02-02", "2027-03-01"),
    ],
)
def test_periods_are_utc_calendar_days_and_months(
    moment: str, day: str, month: str, day_end: str, month_end: str
) -> None:
    at = _at(moment)
    assert period_id("day", at) == day
    assert period_id("month", at) == month
    assert period_end("day", at) == _at(day_end)
    assert period_end("month", at) == _at(month_end)
