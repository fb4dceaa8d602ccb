"""The A/B report's intervals where an arm has few answers: they must hold the truth 95% of
the time there too, so they are wide, open-ended or unknown rather than narrow."""

from __future__ import annotations

from math import comb

import pytest

from tools.intervals import Z95, mean_interval, order_ranks, quantile_interval

EDGES = (1.0, 2.0, 4.0, 8.0, 16.0)


def _sums(values: list[float]) -> tuple[float, float, int]:
    return sum(values), sum(v * v for v in values), len(values)


def test_one_value_has_no_interval_of_its_mean() -> None:
    assert mean_interval(*_sums([0.01])) is None
    assert mean_interval(*_sums([])) is None


def test_the_mean_of_four_values_takes_students_t_wider_than_the_normal() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    interval = mean_interval(*_sums(values))
    assert interval is not None
    sd_of_mean = (5 / 3 / 4) ** 0.5
    assert interval[1] - 2.5 == pytest.approx(3.182 * sd_of_mean)  # t, 3 degrees of freedom
    assert interval[1] - 2.5 > 1.5 * Z95 * sd_of_mean


def test_the_median_of_ten_lies_between_the_2nd_and_the_9th_value() -> None:
    """By hand: P(B <= 1) = 11/1024 = 1.1% <= 2.5% < P(B <= 2) = 56/1024 for B ~ Bin(10, 1/2),
    and symmetrically above: the interval holds the median 1 - 22/1024 = 97.9% of the time."""
    assert order_ranks(10, 0.5) == (2, 9)
    # 1st value in bucket 0, 2nd to 8th in bucket 2, 9th and 10th in bucket 4.
    counts = [1.0, 0.0, 7.0, 0.0, 2.0]
    assert quantile_interval(counts, EDGES, 0.5) == (EDGES[1], EDGES[4])


def test_too_few_values_leave_an_end_of_a_quantiles_interval_open() -> None:
    """The largest of n values bounds the p95 from above only when 0.95^n <= 2.5%: from 72
    values on (0.95^71 = 2.6%); a median needs 6 for either end (0.5^5 = 3.1%)."""
    assert order_ranks(71, 0.95)[1] is None
    assert order_ranks(72, 0.95) == (64, 72)
    assert order_ranks(5, 0.5) == (0, None) and order_ranks(6, 0.5) == (1, 6)
    one = [0.0, 0.0, 1.0, 0.0, 0.0]
    assert quantile_interval(one, EDGES, 0.95) == (0.0, None)  # not [2, 4] around the one


@pytest.mark.parametrize("q", [0.5, 0.95])
def test_the_ranks_are_the_binomials_exact_ones(q: float) -> None:
    for n in range(0, 120):
        cdf = [sum(comb(n, j) * q**j * (1 - q) ** (n - j) for j in range(k + 1)) for k in range(n)]
        below = [0.0, *cdf]  # below[r] = P(B < r)
        low = max(r for r in range(n + 1) if below[r] <= 0.025)
        high = [r for r in range(n + 1) if 1 - below[r] <= 0.025]
        assert order_ranks(n, q) == (low, high[0] if high else None), n


def test_the_ranks_of_many_values_are_the_normal_approximations() -> None:
    low, high = order_ranks(10**7, 0.5)
    assert high is not None
    half = Z95 * (10**7 * 0.25) ** 0.5  # the normal approximation is close at this size
    assert low == pytest.approx(5e6 - half, abs=2) and high == pytest.approx(5e6 + half, abs=2)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5])
def test_a_quantile_outside_zero_to_one_is_refused_by_name(q: float) -> None:
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        order_ranks(10, q)
