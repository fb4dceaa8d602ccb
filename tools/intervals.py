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


def mean_interval(total: float, squares: float, n: float, z: float = Z95) -> tuple[float, float]:
    """The normal interval of a mean from the sum and the sum of squares of n values."""
    if n < 2:
        mean = total / n if n else 0.0
        return mean, mean
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1))
    half = z * math.sqrt(variance / n)
    return mean - half, mean + half


def small_sample_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% interval of the mean of a few values (Student's t; past 31 values the
    normal's, at most 4% narrower)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = (T95[n - 2] if n - 1 <= len(T95) else Z95) * sd / math.sqrt(n)
    return mean - half, mean + half


def histogram_quantile(counts: Sequence[float], edges: Sequence[float], q: float) -> float:
    """The q-quantile of values binned by upper `edges` (bucket 0 starts at 0), read at rank
    q * n and interpolated within its bucket (geometrically, as the edges grow so)."""
    return _at_rank(counts, edges, q * sum(counts))


def quantile_interval(
    counts: Sequence[float], edges: Sequence[float], q: float, z: float = Z95
) -> tuple[float, float]:
    """A distribution-free interval of the q-quantile: from the lower edge of the bucket
    holding rank n*q - z*sqrt(n*q*(1-q)) to the upper edge of the one holding rank
    n*q + z*sqrt(...) (the binomial's normal approximation, widened to whole buckets so
    that binning cannot move the truth outside it)."""
    n = sum(counts)
    half = z * math.sqrt(n * q * (1 - q))
    low, high = _bucket(counts, max(0.0, n * q - half)), _bucket(counts, min(n, n * q + half))
    return (edges[low - 1] if low else 0.0), edges[high]


def _bucket(counts: Sequence[float], rank: float) -> int:
    """The bucket that holds `rank` (0-based, fractional)."""
    seen = 0.0
    for i, count in enumerate(counts):
        if count and seen + count >= rank:
            return i
        seen += count
    return len(counts) - 1


def _at_rank(counts: Sequence[float], edges: Sequence[float], rank: float) -> float:
    if not counts:
        return 0.0
    i = _bucket(counts, rank)
    low, high = (edges[i - 1] if i else 0.0), edges[i]
    count = counts[i]
    share = (rank - sum(counts[:i])) / count if count else 1.0
    if low <= 0:
        return high * share
    return float(low * (high / low) ** share)
