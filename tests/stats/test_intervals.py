"""rotax.stats.intervals against independent computations: scipy's Wilson interval and
bootstrap, the large-sample Wald interval for paired proportions, and coverage by simulation."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from rotax.stats import intervals


def _correlated(rng, n, p_a, p_b, agree):
    """Paired outcomes: with probability ``agree`` both models share one draw, else independent."""
    shared = rng.random(n) < agree
    u = rng.random(n)
    a = np.where(shared, u < p_a, rng.random(n) < p_a)
    b = np.where(shared, u < p_b, rng.random(n) < p_b)
    return a, b


def test_paired_interval_matches_wald_for_large_samples():
    rng = np.random.default_rng(0)
    a, b = _correlated(rng, 200_000, 0.55, 0.45, agree=0.8)
    n = a.size
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    d = (only_a - only_b) / n
    # the textbook large-sample interval for paired proportions (McNemar's setting)
    se = math.sqrt(only_a + only_b - (only_a - only_b) ** 2 / n) / n
    z = sps.norm.ppf(0.975)
    assert intervals.paired_difference_interval(a, b) == pytest.approx((d - z * se, d + z * se), abs=2e-4)


def test_paired_interval_covers_and_is_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(1)
    true = 0.60 - 0.52
    covered, widths_paired, widths_unpaired = 0, [], []
    for _ in range(400):
        a, b = _correlated(rng, 1024, 0.60, 0.52, agree=0.85)
        low, high = intervals.paired_difference_interval(a, b)
        covered += low <= true <= high
        widths_paired.append(high - low)
        low, high = intervals.difference_interval(int(a.sum()), a.size, int(b.sum()), b.size)
        widths_unpaired.append(high - low)
    assert 0.93 <= covered / 400 <= 0.98
    assert np.mean(widths_paired) < 0.6 * np.mean(widths_unpaired)


def test_paired_interval_edge_cases():
    same = np.array([True, False, True, True])
    low, high = intervals.paired_difference_interval(same, same)
    assert low < 0 < high  # identical models: no difference, but not a zero-width interval
    assert intervals.paired_difference_interval(np.ones(50, bool), np.zeros(50, bool))[1] == 1.0
    assert all(math.isnan(x) for x in intervals.paired_difference_interval([], []))
    with pytest.raises(ValueError, match="same items"):
        intervals.paired_difference_interval([True], [True, False])


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    assert intervals.equivalent((-0.01, 0.015), 0.02)
    assert not intervals.equivalent((-0.01, 0.025), 0.02)
    assert not intervals.equivalent((-0.03, 0.0), 0.02)


def test_recovered_share_bootstrap_matches_scipy():
    rng = np.random.default_rng(2)
    n = 3000
    reference = rng.random(n) < 0.60
    tuned = np.where(rng.random(n) < 0.7, reference, rng.random(n) < 0.40)
    repaired = np.where(rng.random(n) < 0.8, tuned, reference)
    ours = intervals.recovered_share_interval(repaired, tuned, reference, draws=3000, seed=3)
    expected = (repaired.mean() - tuned.mean()) / (reference.mean() - tuned.mean())
    assert ours["estimate"] == pytest.approx(expected)

    def share(r, t, f, axis=-1):
        return (r.mean(axis) - t.mean(axis)) / (f.mean(axis) - t.mean(axis))

    scipy_ci = sps.bootstrap((repaired.astype(float), tuned.astype(float), reference.astype(float)),
                             share, paired=True, vectorized=True, n_resamples=3000, method="percentile",
                             random_state=np.random.default_rng(4)).confidence_interval
    assert ours["interval"] == pytest.approx((scipy_ci.low, scipy_ci.high), abs=0.03)
    assert ours["undefined_share"] == 0.0


def test_recovered_share_is_undefined_when_nothing_was_lost():
    same = np.array([True, False] * 50)
    out = intervals.recovered_share_interval(same, same, same, draws=200)
    assert math.isnan(out["estimate"]) and out["interval"] == [-math.inf, math.inf]
    with pytest.raises(ValueError, match="add up"):
        intervals.recovered_share_interval(same, same, same, groups=[10, 10])


def test_bootstrap_resamples_within_groups():
    # group 0 all ones, group 1 all zeros: a stratified draw keeps the mean at exactly 0.5
    values = np.array([1.0] * 30 + [0.0] * 70)
    low, high, undefined = intervals.bootstrap_interval(lambda i: values[i].mean(), [30, 70], draws=200)
    assert (low, high, undefined) == (0.3, 0.3, 0.0)


def test_outcome_strings_round_trip():
    bits = np.array([True, False, False, True])
    assert intervals.encode_outcomes(bits) == "1001"
    np.testing.assert_array_equal(intervals.decode_outcomes("1001"), bits)
    with pytest.raises(ValueError):
        intervals.decode_outcomes("10x1")
