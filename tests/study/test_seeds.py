"""Means over SFT seeds: intervals against scipy's t interval, views, merged verdicts."""

import math

import numpy as np
import pytest
from scipy import stats

from rotax.study.seeds import headline_table, mean_over_seeds, merge_claims, seed_views


def test_spread_dominated_interval_is_the_t_interval_of_the_seed_means():
    estimates = [0.10, 0.18, 0.25]
    intervals = [[e - 0.01, e + 0.01] for e in estimates]  # hands noise far below the spread
    mean, (low, high) = mean_over_seeds(estimates, intervals)
    ref = stats.t.interval(0.95, df=2, loc=np.mean(estimates), scale=stats.sem(estimates))
    assert mean == pytest.approx(np.mean(estimates))
    assert (low, high) == pytest.approx(ref, abs=2e-4)  # the t table has 3 decimals


def test_within_seed_noise_is_a_floor():
    # three seeds that agree exactly: the interval is the hands' noise of a mean of 3, per side
    mean, (low, high) = mean_over_seeds([0.5, 0.5, 0.5], [[0.4, 0.7], [0.4, 0.7], [0.4, 0.7]])
    assert mean == 0.5
    assert low == pytest.approx(0.5 - 0.1 / math.sqrt(3))
    assert high == pytest.approx(0.5 + 0.2 / math.sqrt(3))


def test_undefined_seeds_are_skipped_and_unbounded_sides_stay_unbounded():
    assert mean_over_seeds([None, 0.3], [[None, None], [0.2, 0.4]]) == (0.3, [0.2, 0.4])
    mean, (low, high) = mean_over_seeds([0.3, 0.5], [[0.2, "inf"], [0.4, 0.6]])
    assert high == math.inf and math.isfinite(low)
    assert math.isnan(mean_over_seeds([None], [[None, None]])[0])


def _claim(verdict, estimate, interval):
    return {"id": "sft_forgetting", "claim": "c", "verdict": verdict, "estimate": estimate,
            "interval": interval, "unit": "u", "evidence": "e"}


def test_merged_verdict_is_common_or_mixed():
    agree = merge_claims([(0, [_claim("supported", 0.2, [0.1, 0.3])]), (1, [_claim("supported", 0.3, [0.2, 0.4])])])
    assert agree[0]["verdict"] == "supported" and agree[0]["estimate"] == pytest.approx(0.25)
    assert [p["sft_seed"] for p in agree[0]["per_seed"]] == [0, 1]
    split = merge_claims([(0, [_claim("supported", 0.2, [0.1, 0.3])]), (1, [_claim("mixed", 0.05, [-0.01, 0.1])])])
    assert split[0]["verdict"] == "mixed" and "disagree" in split[0]["evidence"]


def test_views_and_headline_rows():
    cell = lambda m: {"mean": m, "ci": [m - 0.05, m + 0.05]}  # noqa: E731
    outputs = {"sft": {"sft_seed": 0, "seeds": [{"sft_seed": 0}, {"sft_seed": 1}]},
               "ppo": {"runs": [{"label": "end", "sft_seed": 0}, {"label": "end", "sft_seed": 1}]},
               "resets": {"rows": [{"name": "a", "sft_seed": 0}, {"name": "a", "sft_seed": 1}]},
               "autoselect": {"chosen": "x"}}
    views = seed_views(outputs)
    assert [i for i, _ in views] == [0, 1]
    assert views[1][1]["ppo"]["runs"] == [{"label": "end", "sft_seed": 1}]
    assert "autoselect" in views[0][1] and "autoselect" not in views[1][1]
    rows = lambda m: [{"name": "x", "kind": "uv", "id": cell(m), "ood": cell(m), "recovered": m,  # noqa: E731
                       "seconds": 1.0, "detail": ""},
                      {"name": "only0", "kind": "auto", "id": cell(m), "ood": cell(m), "recovered": None,
                       "seconds": None, "detail": "d"}]
    table = headline_table([(0, rows(0.4)), (1, rows(0.6)[:1])])
    assert table[0]["ood"]["mean"] == pytest.approx(0.5) and table[0]["recovered"] == pytest.approx(0.5)
    assert table[1]["detail"].endswith("(SFT seed 0 only)")
