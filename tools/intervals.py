"""95% confidence intervals for the reports: a proportion, a mean, a quantile of a histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964
T95 = (
    *(12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228),
    *(2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086),
    *(2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042),
)
"""Student's t two-sided 95% quantiles for 1 to 30 degrees of freedom (few repeats)."""


def wilson(hits: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: sound at 0 hits, unlike the normal one."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_interval(total: float, squares: float, n: float) -> tuple[float, float] | None:
    """The Student's t interval of a mean from the sum and the sum of squares of n values;
    None under two values, whose spread is unknown."""
    if n < 2:
        return None
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = _t95(round(n) - 1) * math.sqrt(variance / n)
    return mean - half, mean + half


def small_sample_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the mean of a few values (Student's t)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t95(n - 1) * sd / math.sqrt(n)
    return mean - half, mean + half


def _t95(df: int) -> float:
    """Student's t two-sided 95% quantile; past 30 degrees of freedom the normal's, at most 4%
    narrower."""
    return T95[df - 1] if df <= len(T95) else Z95


def histogram_quantile(counts: Sequence[float], edges: Sequence[float], q: float) -> float | None:
    """The q-quantile of values binned by upper `edges` (bucket 0 starts at 0), read at rank
    q * n and interpolated within its bucket (geometrically, as the edges grow so). `counts`
    may have one bucket more, of the values above the last edge: a quantile there is None,
    as nothing bounds it."""
    return _at_rank(counts, edges, q * sum(counts))


def quantile_interval(
    counts: Sequence[float], edges: Sequence[float], q: float
) -> tuple[float, float | None]:
    """An exact distribution-free interval of the q-quantile: from the l-th to the u-th
    smallest value (`order_ranks`), widened to whole buckets so that binning cannot move the
    truth outside it. Too few values for a lower end give 0 (bucket 0 starts there), for an
    upper end None: unbounded, not the largest value seen; so does an upper end above the
    last edge (in the bucket `counts` may have there, see `histogram_quantile`)."""
    low, high = order_ranks(round(sum(counts)), q)
    start = _bucket(counts, low) if low else 0
    end = None if high is None else _bucket(counts, high)
    upper = None if end is None or end == len(edges) else edges[end]
    return (edges[start - 1] if start else 0.0), upper


def order_ranks(n: int, q: float, tail: float = 0.025) -> tuple[int, int | None]:
    """The ranks (from 1) l and u of n values whose l-th and u-th smallest hold their
    q-quantile with at least 1 - 2 * tail: with B ~ Binomial(n, q) the count of values below
    the quantile, l is the largest with P(B < l) <= tail (0: none is) and u the smallest
    with P(B >= u) <= tail (None: none is). `q` lies strictly between 0 and 1."""
    if not 0 < q < 1:
        raise ValueError(f"a quantile lies strictly between 0 and 1, not {q}")
    first, pmf = _binomial(n, q)
    low, below = first, 0.0  # below: P(B < low)
    for p in pmf:  # p: P(B = low)
        if below + p > tail:
            break
        below, low = below + p, low + 1
    high, above = first + len(pmf), 0.0  # above: P(B >= high)
    for p in reversed(pmf):  # p: P(B = high - 1)
        if above + p > tail:
            break
        above, high = above + p, high - 1
    return low, high if high <= n else None


def _binomial(n: int, q: float) -> tuple[int, list[float]]:
    """P(B = k) for B ~ Binomial(n, q), from k = the first returned on, over the ranks
    within 12 standard deviations + 60 of n * q: Bernstein's inequality leaves under 1e-30
    outside, and a million values take some thousands of terms, not a million."""
    reach = 12 * math.sqrt(n * q * (1 - q)) + 60
    first, last = max(0, math.floor(n * q - reach)), min(n, math.ceil(n * q + reach))
    log_q, log_not_q, log_n = math.log(q), math.log1p(-q), math.lgamma(n + 1)
    return first, [
        math.exp(
            log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_q + (n - k) * log_not_q
        )
        for k in range(first, last + 1)
    ]


def _bucket(counts: Sequence[float], rank: float) -> int:
    """The bucket that holds `rank` (0-based, fractional)."""
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            return i
        seen += count
    return len(counts) - 1


def _at_rank(counts: Sequence[float], edges: Sequence[float], rank: float) -> float | None:
    if not counts:
        return 0.0
    i = _bucket(counts, rank)
    if i == len(edges):
        return None
    low, high = (edges[i - 1] if i else 0.0), edges[i]
    count = counts[i]
    share = (rank - sum(counts[:i])) / count if count else 1.0
    if low <= 0:
        return high * share
    return float(low * (high / low) ** share)
