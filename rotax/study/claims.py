"""One entry per claim of the papers, with a verdict computed from an interval and a threshold.

Every claim object has a stable ``id``, the ``claim`` sentence, a numeric ``estimate`` and its
95% ``interval`` in the claim's ``unit``, the ``verdict`` and a one-paragraph ``evidence``.
Comparisons of two models use the per-hand outcomes on the *same* test hands (paired); a
"% of lost OOD recovered" gets a stratified bootstrap interval (hands resampled within each
evaluation seed). Verdicts (DESIGN invariant 11):

* recovery claims: *supported* when the gain over the damaged model excludes 0 and the
  recovered share's lower bound reaches the claim's level (70% for the resets, 50% for PPO),
  *not supported* when its upper bound is below the level, else *mixed*; *not testable*
  while SFT's OOD loss is within noise (there is nothing to recover);
* ``sigma_only_null``: equivalence within ±2 points (two one-sided tests: the 90% paired
  interval inside the margin);
* ``sft_forgetting``: the OOD loss from the peak to the end excludes 0, the peak comes first,
  and ID did not fall by more than 2 points.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from rotax.stats.intervals import (bootstrap_interval, decode_outcomes, equivalent,
                                   paired_difference_interval, recovered_share_interval)
from rotax.study.advantage_panel import first_update_summary
from rotax.study.report import percent
from rotax.study.stage_resets import claim_rows

RESET_LEVEL, PPO_LEVEL = 0.7, 0.5
EQUIVALENCE_MARGIN = 0.02  # Σ-only "changes nothing": within ±2 OOD points
ID_TOLERANCE = 0.02        # "ID keeps improving or holds": ID(end) ≥ ID(peak) − 2 points


def _pct(x) -> str:
    return percent(x, "%")


def _points(interval) -> str:
    return f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}] points"


def _outcomes(acc: dict):
    bits = acc.get("outcomes")
    return decode_outcomes(bits) if bits else None


def paired_change(new: dict, old: dict, confidence: float = 0.95) -> tuple[float, list[float]]:
    """``(estimate, [low, high])`` of accuracy(new) − accuracy(old) on the same hands (paired
    per-hand outcomes); nan without outcomes or when the hand sets differ."""
    a, b = _outcomes(new), _outcomes(old)
    if a is None or b is None or a.size != b.size:
        return math.nan, [math.nan, math.nan]
    return float(a.mean() - b.mean()), list(paired_difference_interval(a, b, confidence))


def recovered(repaired: dict, damaged: dict, reference: dict) -> dict:
    """Share of the reference → damaged OOD loss that ``repaired`` wins back, with its
    bootstrap interval (the three on the same test hands)."""
    parts = [_outcomes(x) for x in (repaired, damaged, reference)]
    if any(p is None for p in parts) or len({p.size for p in parts}) != 1:
        return {"estimate": math.nan, "interval": [math.nan, math.nan], "undefined_share": math.nan}
    return recovered_share_interval(*parts, groups=damaged.get("groups"))


def recovery_verdict(gain_interval, share: dict, level: float, lost: bool) -> str:
    if not lost:
        return "not testable"
    low, high = share["interval"]
    if math.isnan(low):
        return "not tested"
    if gain_interval[0] > 0 and low >= level:
        return "supported"
    return "not supported" if high < level else "mixed"


def _number(x):
    """A JSON-safe number: None for nan (undefined), ±inf kept as strings JSON can hold."""
    x = float(x)
    if math.isnan(x):
        return None
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _claim(id_, claim, verdict, estimate, interval, unit, evidence) -> dict:
    return {"id": id_, "claim": claim, "verdict": verdict, "estimate": _number(estimate),
            "interval": [_number(x) for x in interval], "unit": unit, "evidence": evidence}


def forgetting_claim(sft: dict, peak: dict, end: dict, base: dict | None = None) -> dict:
    """Peak → end OOD loss on the test hands (paired); ID must not fall by more than
    ``ID_TOLERANCE`` from the peak and must have risen over the base (the curve's last point vs
    the base, both on the curve hands)."""
    loss, loss_interval = paired_change(peak["ood"], end["ood"])
    id_change, id_interval = paired_change(end["id"], peak["id"])
    id_held = not id_interval[1] < -ID_TOLERANCE  # ID did not fall by more than the tolerance
    curve_end = next((c for c in sft["curve"] if c["step"] == sft["end_step"]), None)
    rise, rise_interval = (paired_change(curve_end["id"], base["id"]) if base and curve_end
                           else (math.nan, [math.nan, math.nan]))
    id_rose = math.isnan(rise) or rise_interval[0] > 0  # unknown without a base evaluation
    early = sft["peak_step"] < sft["end_step"]
    if loss_interval[0] > 0 and early and id_held and id_rose:
        verdict = "supported"
    elif loss_interval[1] <= 0 or not early:
        verdict = "not supported"
    else:
        verdict = "mixed"
    return _claim("sft_forgetting", "OOD accuracy peaks early in SFT and then decays", verdict,
                  loss, loss_interval, "OOD accuracy lost, peak − end (share of hands)",
                  f"OOD {_pct(peak['ood']['mean'])} at step {sft['peak_step']} vs {_pct(end['ood']['mean'])} "
                  f"at the end (step {sft['end_step']}) on the same {end['ood'].get('n', '?')} test hands: "
                  f"lost {_points(loss_interval)} (paired 95%); ID {_pct(peak['id']['mean'])} → "
                  f"{_pct(end['id']['mean'])} ({_points(id_interval)}"
                  f"{'' if id_held else ', fell by more than 2 points'})"
                  + ("" if math.isnan(rise) else f"; ID over the base {_points(rise_interval)} on the curve "
                     f"hands{'' if id_rose else ' (did not rise)'}") + ".")


def _start_accuracy(run: dict, sft: dict, grid: dict) -> dict | None:
    """The PPO start checkpoint's accuracy on the test hands."""
    if run.get("start_test"):
        return run["start_test"]
    if run["start_step"] == sft["end_step"]:
        return grid.get("SFT end (no reset)")
    if run["start_step"] == sft["peak_step"]:
        return grid.get("SFT peak-OOD (no reset)")
    return None


def ppo_claim(outputs: dict, sft: dict, grid: dict, peak: dict, lost: bool) -> dict:
    claim = "PPO on ID hands restores most of the OOD accuracy SFT lost"
    runs = outputs.get("ppo", {}).get("runs", [])
    if not runs:
        return _claim("ppo_restores", claim, "not tested", math.nan, [math.nan] * 2, "share", "no PPO run.")
    by_start: dict[str, list] = {}
    for run in runs:
        start = _start_accuracy(run, sft, grid)
        if start is None or run["start_step"] <= sft["peak_step"]:
            continue  # from the peak (or before it) there is nothing lost to restore
        share = recovered(run["final"]["ood"], start["ood"], peak["ood"])
        gain = paired_change(run["final"]["ood"], start["ood"])
        by_start.setdefault(run["start"], []).append((run, share, gain))
    if not by_start:
        return _claim("ppo_restores", claim, "not testable", math.nan, [math.nan] * 2, "share",
                      "every PPO run starts at or before the SFT peak: nothing lost to restore.")
    # the verdict of the best start (a claim about PPO, judged where it did best), per-run evidence
    def mean(values):
        return float(np.mean(values))

    summaries = {s: (mean([x[1]["estimate"] for x in v]), mean([x[1]["interval"][0] for x in v]),
                     mean([x[1]["interval"][1] for x in v]), mean([x[2][1][0] for x in v]), len(v))
                 for s, v in by_start.items()}
    best = max(summaries, key=lambda s: summaries[s][0] if not math.isnan(summaries[s][0]) else -math.inf)
    est, low, high, gain_low, n = summaries[best]
    verdict = recovery_verdict([gain_low, math.nan], {"interval": [low, high]}, PPO_LEVEL, lost)
    text = "; ".join(f"from {s} ({k} seed{'s' if k > 1 else ''}): recovered {_pct(e)} [{_pct(lo)}, {_pct(hi)}] "
                     f"of the peak → start loss" for s, (e, lo, hi, _, k) in summaries.items())
    return _claim("ppo_restores", claim, verdict, est, [low, high], "share of the OOD lost (peak → PPO start) recovered",
                  text + f"; measured against each run's own start on the test hands (intervals: seed means "
                         f"of per-run bootstrap bounds); verdict from {best} at the {PPO_LEVEL:.0%} level.")


def reset_claim(id_, claim, row: dict | None, end: dict, peak: dict, lost: bool) -> dict | None:
    if row is None:
        return None
    share = recovered(row["ood"], end["ood"], peak["ood"])
    gain, gain_interval = paired_change(row["ood"], end["ood"])
    id_cost, _ = paired_change(row["id"], end["id"])
    return _claim(id_, claim, recovery_verdict(gain_interval, share, RESET_LEVEL, lost), share["estimate"],
                  share["interval"], "share of the OOD lost (peak → end) recovered",
                  f"{row['name']}: OOD {_pct(row['ood']['mean'])} vs SFT end {_points(gain_interval)} "
                  f"(paired), ID change {_pct(id_cost)}; recovered {_pct(share['estimate'])} "
                  f"[{_pct(share['interval'][0])}, {_pct(share['interval'][1])}] (bootstrap 95%) against "
                  f"the {RESET_LEVEL:.0%} level.")


CONTROL_CLAIMS = {
    # id: (claim, sign: +1 when the claim says the control is above PPO)
    "continued_sft": ("control_continued_sft", "PPO restores more OOD accuracy than continued SFT on fresh ID "
                      "hands at PPO's learning rate and sample count", -1),
    "ppo_kl_base": ("control_ppo_kl_base", "PPO with a KL penalty to the base keeps more OOD accuracy than "
                    "plain PPO", +1),
    "ppo_shuffled": ("control_ppo_shuffled", "PPO's OOD change comes from the reward (PPO on shuffled rewards "
                     "ends lower)", -1),
}


def control_claims(outputs: dict, sft: dict, grid: dict, peak: dict) -> list[dict]:
    """One claim per control: the paired OOD difference between the control and PPO (seed 0)
    from the same start on the same test hands, signed so that > 0 supports the claim."""
    runs = outputs.get("ppo", {}).get("runs", [])
    out = []
    for c in outputs.get("ppo", {}).get("controls", []):
        id_, claim, sign = CONTROL_CLAIMS[c["control"]]
        ppo = next((r for r in runs if r["start_step"] == c["start_step"] and r.get("seed", 0) == 0), None)
        start = _start_accuracy(c, sft, grid)
        if ppo is None or start is None:
            out.append(_claim(id_, claim, "not tested", math.nan, [math.nan] * 2, "OOD points",
                              f"no PPO run from {c['start']} to compare with."))
            continue
        first, second = (c, ppo) if sign > 0 else (ppo, c)
        diff, interval = paired_change(first["final"]["ood"], second["final"]["ood"])
        verdict = ("not tested" if math.isnan(diff) else "supported" if interval[0] > 0
                   else "not supported" if interval[1] < 0 else "mixed")
        own, own_interval = paired_change(c["final"]["ood"], start["ood"])
        ppo_gain, ppo_interval = paired_change(ppo["final"]["ood"], start["ood"])
        share = recovered(c["final"]["ood"], start["ood"], peak["ood"])
        out.append(_claim(id_, claim, verdict, diff, interval,
                          "OOD accuracy difference (share of hands), > 0 supports the claim",
                          f"from {c['start']} (step {c['start_step']}): {c['name']} OOD "
                          f"{_pct(c['final']['ood']['mean'])} ({_points(own_interval)} vs its start; recovered "
                          f"{_pct(share['estimate'])} [{_pct(share['interval'][0])}, {_pct(share['interval'][1])}] "
                          f"of the peak → start loss), ID {_pct(c['final']['id']['mean'])}; PPO "
                          f"{_pct(ppo['final']['ood']['mean'])} ({_points(ppo_interval)} vs its start); "
                          f"difference {_points(interval)} (paired 95%)."))
    return out


def sigma_only_claim(row: dict | None, end: dict) -> dict | None:
    if row is None:
        return None
    gain, interval90 = paired_change(row["ood"], end["ood"], confidence=0.90)
    _, interval95 = paired_change(row["ood"], end["ood"])
    if math.isnan(gain):
        verdict = "not tested"
    elif equivalent(interval90, EQUIVALENCE_MARGIN):
        verdict = "supported"
    else:
        verdict = "not supported" if interval95[0] > 0 or interval95[1] < 0 else "mixed"
    return _claim("sigma_only_null", "Restoring singular values only (Σ-only) changes nothing", verdict,
                  gain, interval95, "OOD change vs the SFT end (share of hands)",
                  f"OOD {_pct(row['ood']['mean'])} vs SFT end: 90% paired interval {_points(interval90)} "
                  f"against the ±{100 * EQUIVALENCE_MARGIN:.0f}-point equivalence margin.")


def _metric_rows(path: Path, target: str) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["target"] == target]


def _ratio_to_null(rows: list[dict], metric: str) -> tuple[float, list[float]]:
    """Mean over matrices of metric / its matched-norm null, with a bootstrap interval over
    matrices."""
    pairs = [(float(r[metric]), float(r[f"null_{metric}"])) for r in rows
             if r.get(metric) not in (None, "") and r.get(f"null_{metric}") not in (None, "")
             and float(r[f"null_{metric}"]) > 0]
    if not pairs:
        return math.nan, [math.nan, math.nan]
    ratios = np.array([a / b for a, b in pairs])
    low, high, _ = bootstrap_interval(lambda i: float(ratios[i].mean()), [ratios.size], draws=1000)
    return float(ratios.mean()), [low, high]


def spectral_claim(run_dir: Path, sft: dict) -> dict | None:
    """Σ drift and top-k rotation of SFT end vs base (and vs the peak), each against the
    matched-norm null: the papers' picture needs rotation well above the null while Σ moves
    little."""
    analysis = Path(run_dir) / "analysis"
    target = f"sft_{sft['end_step']}"
    base_rows = _metric_rows(analysis / "vs_base" / "metrics.csv", target)
    if not base_rows:
        return None
    rot, rot_interval = _ratio_to_null(base_rows, "chordal_norm_u")
    drift, drift_interval = _ratio_to_null(base_rows, "sigma_drift")
    mean_drift = float(np.mean([float(r["sigma_drift"]) for r in base_rows]))
    peak_rows = _metric_rows(analysis / "vs_peak" / "metrics.csv", target)
    peak_rot, peak_interval = _ratio_to_null(peak_rows, "chordal_norm_u")
    if rot_interval[0] > 1 and mean_drift < 0.05:
        verdict = "supported"
    elif rot_interval[1] <= 1:
        verdict = "not supported"
    else:
        verdict = "mixed"
    modules: dict[str, list] = {}
    for r in base_rows:
        modules.setdefault(r["module"], []).append(r)
    def module_ratio(rs, metric):
        r, (lo, hi) = _ratio_to_null(rs, metric)
        return f"{r:.2f} [{lo:.2f}, {hi:.2f}]"

    per_module = ", ".join(f"{m}: rotation {module_ratio(rs, 'chordal_norm_u')}, Σ drift {module_ratio(rs, 'sigma_drift')}"
                           for m, rs in sorted(modules.items()))
    return _claim("sigma_stable", "Singular values barely move while singular vectors rotate", verdict,
                  rot, rot_interval, "top-k rotation (chordal, U) / matched-norm null, mean over matrices",
                  f"SFT end vs base: mean Σ drift {_pct(mean_drift)} ({drift:.2f}× its null "
                  f"[{drift_interval[0]:.2f}, {drift_interval[1]:.2f}]); rotation {rot:.2f}× the null "
                  f"[{rot_interval[0]:.2f}, {rot_interval[1]:.2f}] (per module: {per_module})"
                  + (f"; vs the peak {peak_rot:.2f}× [{peak_interval[0]:.2f}, {peak_interval[1]:.2f}]"
                     if peak_rows else "") + ". A ratio near 1 means a random change of the same size "
                  "rotates as much.")


def claims(ctx, outputs: dict, table: list, advantage_groups: dict | None = None, *,
           spectra: bool = True) -> list[dict]:
    """The claims of one SFT seed from its stage outputs (test-hand rows of the reset grid, PPO
    runs, the analysis metrics when ``spectra``) and the PPO runs' advantage histories."""
    sft = outputs["sft"]
    grid_rows = outputs.get("resets", {}).get("rows", [])
    grid = {r["name"]: r for r in grid_rows}
    curve = {c["step"]: c for c in sft["curve"]}
    # judged on the test hands: the peak was picked on the curve hands (winner's curse)
    peak = grid.get("SFT peak-OOD (no reset)", curve[sft["peak_step"]])
    end = grid.get("SFT end (no reset)", curve[sft["end_step"]])
    out = [forgetting_claim(sft, peak, end, outputs.get("base", {}).get("eval"))]
    lost = (out[0]["interval"][0] or 0) > 0
    out.append(ppo_claim(outputs, sft, grid, peak, lost))
    out += control_claims(outputs, sft, grid, peak)
    shapes = first_update_summary(advantage_groups or {})
    if shapes:
        def shape(s):
            spread = "" if s["spread"] is None else f", 5–95% spread {s['spread']:.2f}"
            return f"skewness {s['skewness']:+.2f}, share positive {_pct(s['positive_share'])}{spread}"

        out.append(_claim("ppo_advantage_shape", "The starts PPO can restore from have a flat advantage "
                          "distribution", "reported", math.nan, [math.nan] * 2, "",
                          "first update, seed means: " + "; ".join(f"from {start}: {shape(s)}"
                                                                   for start, s in shapes.items())
                          + ". Compare with the PPO rows; the figure shows every update."))
    spectral = spectral_claim(ctx.run_dir, sft) if spectra else None
    if spectral:
        out.append(spectral)
    judged = claim_rows([r["name"] for r in grid_rows], ctx.config.study.reset_grid)

    def row(claim_id):
        return next((r for r in grid_rows if r["name"] == judged.get(claim_id)), None)

    for id_, claim in (
            ("uv_merge_recovers", "Restoring the reference's top singular directions (target Σ kept) "
             "recovers much of the lost OOD accuracy"),
            ("layer_reset_recovers", "Resetting the first layers (~25%) recovers much of the lost OOD accuracy")):
        entry = reset_claim(id_, claim, row(id_), end, peak, lost)
        if entry:
            out.append(entry)
    entry = sigma_only_claim(row("sigma_only_null"), end)
    if entry:
        out.append(entry)
    auto = outputs.get("autoselect")
    if auto:
        share = recovered(auto["test"]["ood"], end["ood"], peak["ood"])
        gain, gain_interval = paired_change(auto["test"]["ood"], end["ood"])
        out.append(_claim("autoselect", "(rotax) an automatically selected reset, chosen on probe hands only",
                          recovery_verdict(gain_interval, share, RESET_LEVEL, lost), share["estimate"],
                          share["interval"], "share of the OOD lost (peak → end) recovered",
                          f"chose '{auto['chosen']}' in {auto['search_seconds']:.0f} s; test OOD "
                          f"{_pct(auto['test']['ood']['mean'])} vs SFT end {_points(gain_interval)}, ID "
                          f"{_pct(auto['test']['id']['mean'])}."))
    return out
