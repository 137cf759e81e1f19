"""Mann-Kendall trend test with the Hamed-Rao autocorrelation correction, and Sen's slope.

Logged losses are autocorrelated (each point is close to the last), which makes the plain Mann-Kendall
test call trends significant far too often; Hamed & Rao (1998) inflate the variance of S by the
autocorrelation of the detrended ranks. Long series are first averaged into at most ``max_points`` bins,
which keeps the O(n^2) pairwise sums cheap and smooths batch noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class Trend:
    z: float
    p_value: float
    slope: float  # Sen's slope, in value units per (binned) point
    n: int
    significant: bool

    @property
    def direction(self) -> int:
        """-1 falling, +1 rising, 0 no significant trend."""
        if not self.significant:
            return 0
        return -1 if self.z < 0 else 1


def bin_means(values: np.ndarray, max_points: int) -> np.ndarray:
    if len(values) <= max_points:
        return values
    return np.array([chunk.mean() for chunk in np.array_split(values, max_points)])


def sen_slope(values: np.ndarray) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    i, j = np.triu_indices(n, k=1)
    return float(np.median((values[j] - values[i]) / (j - i)))


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    return ranks


def _hamed_rao_ratio(values: np.ndarray, slope: float) -> float:
    """n/n* of Hamed & Rao: 1 + 2/(n(n-1)(n-2)) * sum over significant lags of (n-k)(n-k-1)(n-k-2) r_k."""
    n = len(values)
    ranks = _ranks(values - slope * np.arange(n))
    centered = ranks - ranks.mean()
    denom = float(np.sum(centered**2))
    if denom == 0 or n < 3:
        return 1.0
    bound = NormalDist().inv_cdf(1 - 0.05 / 2) / math.sqrt(n)
    total = 0.0
    for k in range(1, n - 1):
        r_k = float(np.sum(centered[:-k] * centered[k:])) / denom
        if abs(r_k) > bound:
            total += (n - k) * (n - k - 1) * (n - k - 2) * r_k
    ratio = 1 + 2 * total / (n * (n - 1) * (n - 2))
    return max(ratio, 1e-3)


def mann_kendall(values: np.ndarray, alpha: float = 0.05, max_points: int = 100) -> Trend:
    """Two-sided Mann-Kendall test on finite ``values`` (in order), Hamed-Rao corrected."""
    x = bin_means(np.asarray(values, dtype=float), max_points)
    n = len(x)
    if n < 3:
        return Trend(z=0.0, p_value=1.0, slope=sen_slope(x), n=n, significant=False)
    i, j = np.triu_indices(n, k=1)
    s = float(np.sum(np.sign(x[j] - x[i])))
    _, tie_counts = np.unique(x, return_counts=True)
    ties = float(np.sum(tie_counts * (tie_counts - 1) * (2 * tie_counts + 5)))
    variance = (n * (n - 1) * (2 * n + 5) - ties) / 18.0
    slope = sen_slope(x)
    variance *= _hamed_rao_ratio(x, slope)
    if variance <= 0 or s == 0:
        z = 0.0
    else:
        z = (s - math.copysign(1.0, s)) / math.sqrt(variance)
    p_value = 2 * (1 - NormalDist().cdf(abs(z)))
    return Trend(z=z, p_value=p_value, slope=slope, n=n, significant=p_value < alpha)
