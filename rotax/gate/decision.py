"""The gate's decision, from intervals on the probe's report half (DESIGN invariant 11).

With per-item scores (higher is better) of base ``b``, tuned ``t`` and repaired ``r`` on the
same report items:

* *lost* = mean(b − t) with a 95% interval — the paired Newcombe interval for 0/1 scores
  (match, accuracy), the percentile bootstrap of the paired mean for NLL;
* ``none`` when that interval's lower bound is ≤ 0 (the tuned model lost nothing beyond noise);
* otherwise *recovered* = (mean r − mean t) / (mean b − mean t) with its stratified-bootstrap
  95% interval (``rotax.stats.intervals.recovered_share_interval``), and *ID cost* =
  mean(t − r) on the ID probe's report half with its paired interval; ``reset`` when the
  recovered interval's lower bound reaches ``target`` and the ID cost's upper bound is within
  ``max_id_cost`` (no ID probe: no cost), else ``rl`` — with the chosen reset as its start.
"""

from __future__ import annotations

import math

import numpy as np

from rotax.stats.intervals import (bootstrap_interval, paired_difference_interval,
                                   recovered_share_interval, wilson_interval)

DECISIONS = ("reset", "rl", "none")


def mean_interval(values, binary: bool, *, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of the mean item score: Wilson for 0/1 items, else the percentile bootstrap."""
    values = np.asarray(values, np.float64)
    if binary:
        return list(wilson_interval(int(values.sum()), values.size))
    low, high, _ = bootstrap_interval(lambda i: float(values[i].mean()), [values.size],
                                      draws=draws, seed=seed)
    return [low, high]


def difference_interval(a, b, binary: bool, *, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% interval of mean(a − b) over paired items."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if binary:
        return list(paired_difference_interval(a > 0.5, b > 0.5))
    diff = a - b
    low, high, _ = bootstrap_interval(lambda i: float(diff[i].mean()), [diff.size], draws=draws,
                                      seed=seed)
    return [low, high]


def decide(base, tuned, repaired, *, binary: bool, id_tuned=None, id_repaired=None,
           id_binary: bool = True, target: float = 0.7, max_id_cost: float = 0.05,
           draws: int = 2000, seed: int = 0) -> dict:
    """The decision dict: ``decision``, ``lost`` + ``lost_interval``, ``recovered`` +
    ``recovered_interval``, ``id_cost`` + ``id_cost_interval`` (None without an ID probe),
    ``target``, ``max_id_cost`` and a one-sentence ``reason``."""
    base, tuned, repaired = (np.asarray(x, np.float64) for x in (base, tuned, repaired))
    lost = float(base.mean() - tuned.mean())
    lost_interval = difference_interval(base, tuned, binary, draws=draws, seed=seed)
    share = recovered_share_interval(repaired, tuned, base, draws=draws, seed=seed)
    out = {"lost": lost, "lost_interval": lost_interval, "recovered": share["estimate"],
           "recovered_interval": share["interval"], "id_cost": None, "id_cost_interval": None,
           "target": target, "max_id_cost": max_id_cost}
    if id_tuned is not None and id_repaired is not None:
        id_tuned, id_repaired = np.asarray(id_tuned, np.float64), np.asarray(id_repaired, np.float64)
        out["id_cost"] = float(id_tuned.mean() - id_repaired.mean())
        out["id_cost_interval"] = difference_interval(id_tuned, id_repaired, id_binary,
                                                      draws=draws, seed=seed + 1)
    if not lost_interval[0] > 0:
        out["decision"] = "none"
        band = f"lost {lost:+.4g}, 95% interval [{lost_interval[0]:+.4g}, {lost_interval[1]:+.4g}]"
        out["reason"] = (f"the tuned model scores better than the base on the report half ({band})"
                         if lost_interval[1] < 0 else
                         f"the tuned model lost nothing beyond noise on the report half ({band} "
                         "includes 0)")
        return out
    low = share["interval"][0]
    id_ok = out["id_cost_interval"] is None or out["id_cost_interval"][1] <= max_id_cost
    if low >= target and id_ok:
        out["decision"] = "reset"
        out["reason"] = (f"the reset recovers {_pct(share['estimate'])} of the loss (95% interval "
                         f"from {_pct(low)}, target {_pct(target)})"
                         + ("" if out["id_cost"] is None else
                            f" at an ID cost of at most {out['id_cost_interval'][1]:.3g}"))
    else:
        out["decision"] = "rl"
        why = (f"its recovered share's lower bound {_pct(low)} is below the target {_pct(target)}"
               if not low >= target else
               f"its ID cost could reach {out['id_cost_interval'][1]:.3g} > {max_id_cost:.3g}")
        out["reason"] = f"no reset qualifies: {why}; start RL from the best reset"
    return out


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.0f}%"
