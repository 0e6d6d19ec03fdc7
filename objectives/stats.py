"""Statistics over replicates: a configuration measured R times (data seeds × init seeds) is reported as its
mean, its sample standard deviation and a 95 % Student-t interval of the mean.

Names: a metric ``m`` measured on replicates ``0..R-1`` becomes ``m`` (the mean, so every consumer of the
plain name keeps reading "the value of this configuration"), ``m.std``, ``m.ci95`` (the half-width of the
interval: the mean ± this) and ``m.r0 .. m.r{R-1}``. With ``R = 1`` there is no spread to estimate: std and
half-width are NaN, never 0, so no one reads a single run as exact.

Comparisons against a baseline are *paired*: the baseline is scored on the same replicates (same data
split, same test set), so the per-replicate differences carry no split-to-split variance and
:func:`paired_difference` gives the interval of the mean difference.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

STD = ".std"
CI95 = ".ci95"
REPLICATE = ".r"
SUFFIXES = (STD, CI95)


def t_quantile(df: int, level: float = 0.95) -> float:
    """Two-sided Student-t critical value: ``t`` with ``P(|T_df| <= t) = level``; NaN for ``df < 1``."""
    if df < 1:
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof 1) and 95 % half-width of ``n`` values (std and half-width NaN when ``n < 2``)."""

    mean: float
    std: float
    ci95: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        return self.mean + self.ci95


def summarise(values: Sequence[float]) -> Summary:
    """:class:`Summary` of finite ``values``; an empty sequence or a non-finite value raises ``ValueError``."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("summarise needs at least one value")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise ValueError(f"replicate values must be finite, got {bad}")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Summary(mean, math.nan, math.nan, n)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return Summary(mean, std, t_quantile(n - 1) * std / math.sqrt(n), n)


def aggregate(replicates: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-replicate metric dicts → ``m``, ``m.std``, ``m.ci95`` and ``m.r{i}`` for every metric all share.

    Metrics missing from some replicate are left out (a mean over fewer replicates would not be comparable).
    """
    if not replicates:
        raise ValueError("aggregate needs at least one replicate")
    shared = [k for k in replicates[0] if all(k in r for r in replicates[1:])]
    out: dict[str, float] = {}
    for key in shared:
        values = [float(r[key]) for r in replicates]
        summary = summarise(values)
        out[key] = summary.mean
        out[key + STD] = summary.std
        out[key + CI95] = summary.ci95
        out.update({f"{key}{REPLICATE}{i}": v for i, v in enumerate(values)})
    return out


def replicate_values(row: Mapping[str, float], key: str) -> list[float]:
    """``m.r0, m.r1, ...`` of one aggregated row, in replicate order (stops at the first missing or NaN)."""
    values = []
    i = 0
    while True:
        value = row.get(f"{key}{REPLICATE}{i}")
        if value is None or not math.isfinite(float(value)):
            return values
        values.append(float(value))
        i += 1


def paired_difference(a: Sequence[float], b: Sequence[float]) -> Summary:
    """:class:`Summary` of ``a[i] - b[i]`` over replicates measured in pairs (same split, same test set)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need the same replicates, got {len(a)} and {len(b)}")
    return summarise([x - y for x, y in zip(a, b, strict=True)])
