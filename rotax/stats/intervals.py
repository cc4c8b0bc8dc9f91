"""Intervals for proportions and their differences, paired and unpaired, and the bootstrap for
ratios such as "share of the lost accuracy recovered".

Paired means: the same items (hands, probe examples) were scored under both models, so the
comparison uses the per-item agreement — far tighter than treating the two scores as
independent samples when the models agree on most items.
"""

from __future__ import annotations

import math
import statistics
from typing import Callable, Sequence

import numpy as np


def _z(confidence: float) -> float:
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (no continuity correction).

    With p̂ = k/n and z the two-sided normal quantile of ``confidence``:
    center = (p̂ + z²/2n) / (1 + z²/n), half width = z/(1 + z²/n) · sqrt(p̂(1−p̂)/n + z²/4n²).
    Returns ``(nan, nan)`` for n = 0."""
    if n == 0:
        return math.nan, math.nan
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside 0..n={n}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def difference_interval(k1: int, n1: int, k2: int, n2: int,
                        confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for p1 − p2 of two *independent* proportions (his
    method 10, built from the two Wilson intervals): with d = p̂1 − p̂2,
    ``(d − sqrt((p̂1−l1)² + (u2−p̂2)²), d + sqrt((u1−p̂1)² + (p̂2−l2)²))``."""
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, confidence)
    l2, u2 = wilson_interval(k2, n2, confidence)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _as_outcomes(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, bool).ravel(), np.asarray(b, bool).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same items: {a.size} vs {b.size}")
    return a, b


def paired_difference_interval(a, b, confidence: float = 0.95) -> tuple[float, float]:
    """Interval for P(a) − P(b) from paired binary outcomes ``a[i]``, ``b[i]`` of the same
    items: Newcombe's (1998) method 10 for paired proportions — the two marginal Wilson
    intervals combined with the phi correlation of the 2×2 agreement table
    (phi = (AD − BC) / sqrt((A+B)(C+D)(A+C)(B+D)), 0 when a margin is empty)."""
    a, b = _as_outcomes(a, b)
    n = a.size
    if n == 0:
        return math.nan, math.nan
    both, only_a, only_b = int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b))
    neither = n - both - only_a - only_b
    ka, kb = both + only_a, both + only_b
    pa, pb = ka / n, kb / n
    la, ua = wilson_interval(ka, n, confidence)
    lb, ub = wilson_interval(kb, n, confidence)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins else 0.0
    d = pa - pb
    low = (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2
    high = (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2
    return max(-1.0, d - math.sqrt(max(low, 0.0))), min(1.0, d + math.sqrt(max(high, 0.0)))


def equivalent(interval: tuple[float, float], margin: float) -> bool:
    """Two one-sided tests at level α given the (1 − 2α) interval of a difference: equivalence
    within ``±margin`` holds when the whole interval lies inside it."""
    low, high = interval
    return -margin < low and high < margin


def bootstrap_interval(statistic: Callable[[np.ndarray], float], groups: Sequence[int], *,
                       draws: int = 2000, confidence: float = 0.95, seed: int = 0
                       ) -> tuple[float, float, float]:
    """Percentile bootstrap of ``statistic(index)`` over items resampled within each group.

    ``groups`` gives the item count of each group (e.g. hands per evaluation seed); items are
    numbered consecutively, group by group, and each draw resamples items with replacement
    inside every group (a stratified bootstrap), so every model's outcomes stay paired by
    index. A statistic that is undefined for a draw returns nan; those draws count as −inf
    and +inf at once (they widen the interval to unbounded when more than α/2 of the draws are
    undefined). Returns ``(low, high, undefined_share)``."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0, *groups])
    values = np.empty(draws)
    for d in range(draws):
        index = np.concatenate([rng.integers(lo, hi, hi - lo) for lo, hi in zip(offsets[:-1], offsets[1:])
                                if hi > lo])
        values[d] = statistic(index)
    undefined = np.isnan(values)
    alpha = (1 - confidence) / 2
    # "nearest": an order statistic, never an interpolation between a finite draw and ±inf
    low = np.quantile(np.where(undefined, -np.inf, values), alpha, method="nearest")
    high = np.quantile(np.where(undefined, np.inf, values), 1 - alpha, method="nearest")
    return float(low), float(high), float(undefined.mean())


def recovered_share(repaired, tuned, reference, index=None) -> float:
    """(P(repaired) − P(tuned)) / (P(reference) − P(tuned)) on the items ``index`` (all by
    default); nan when the reference is not above the tuned model there (nothing lost)."""
    repaired, tuned, reference = (np.asarray(x, np.float64) for x in (repaired, tuned, reference))
    if index is not None:
        repaired, tuned, reference = repaired[index], tuned[index], reference[index]
    lost = reference.mean() - tuned.mean()
    return float((repaired.mean() - tuned.mean()) / lost) if lost > 0 else math.nan


def recovered_share_interval(repaired, tuned, reference, groups: Sequence[int] | None = None, *,
                             draws: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """The recovered share with its stratified-bootstrap interval (items resampled within each
    group, the three models paired by index): ``{"estimate", "interval", "undefined_share"}``."""
    n = len(np.asarray(tuned))
    groups = list(groups) if groups is not None else [n]
    if sum(groups) != n:
        raise ValueError(f"groups {groups} do not add up to the {n} items")
    low, high, undefined = bootstrap_interval(
        lambda index: recovered_share(repaired, tuned, reference, index), groups,
        draws=draws, confidence=confidence, seed=seed)
    return {"estimate": recovered_share(repaired, tuned, reference), "interval": [low, high],
            "undefined_share": undefined}


def decode_outcomes(bits: str) -> np.ndarray:
    """The bool array of a ``"0101…"`` string (how per-item outcomes are stored in JSON)."""
    if set(bits) - {"0", "1"}:
        raise ValueError("per-item outcomes must be a string of 0s and 1s")
    return np.frombuffer(bits.encode(), np.uint8) == ord("1")


def encode_outcomes(outcomes) -> str:
    """``"0101…"`` of a bool array (compact in JSON; one character per item)."""
    return "".join("1" if x else "0" for x in np.asarray(outcomes, bool).ravel())
