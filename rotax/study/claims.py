"""One paragraph per claim of the papers, with a verdict computed from this run's numbers."""

from __future__ import annotations

from rotax.study.advantage_panel import first_update_summary
from rotax.study.report import percent
from rotax.stats.intervals import difference_interval


def _pct(x) -> str:
    return percent(x, "%")


def _verdict_recovery(rec, lo_ok: float = 0.5) -> str:
    if rec is None:
        return "not tested"
    return "supported" if rec >= lo_ok else ("mixed" if rec >= 0.2 else "not supported")


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _find(table, prefix):
    return next((r for r in table if r["name"].startswith(prefix)), None)


def _mean_metric(summary_rows, metric):
    values = [r[metric] for r in summary_rows if metric in r]
    return sum(values) / len(values) if values else None


def ood_difference(a: dict, b: dict) -> tuple[float, float]:
    """95% interval of OOD(a) − OOD(b) for two accuracy dicts with ``mean`` and ``n``
    (Newcombe's hybrid score interval); (nan, nan) without counts."""
    a, b = a["ood"], b["ood"]
    if not a.get("n") or not b.get("n"):
        return float("nan"), float("nan")
    return difference_interval(round(a["mean"] * a["n"]), a["n"], round(b["mean"] * b["n"]), b["n"])


def _points(interval) -> str:
    return f"[{100 * interval[0]:+.1f}, {100 * interval[1]:+.1f}] points"


def claims(ctx, outputs: dict, table: list, advantage_groups: dict | None = None) -> list[dict]:
    """The claim paragraphs from the stage outputs, the summary's table and the PPO runs'
    advantage histories (:func:`rotax.study.advantage_panel.by_start`)."""
    out = []
    sft = outputs["sft"]
    curve = {c["step"]: c for c in sft["curve"]}
    peak, end = curve[sft["peak_step"]], curve[sft["end_step"]]
    # judged on the test hands when measured there: the peak was picked on the curve hands, so
    # its curve value is biased upwards (winner's curse)
    grid = {r["name"]: r for r in outputs.get("resets", {}).get("rows", [])}
    peak = grid.get("SFT peak-OOD (no reset)", peak)
    end = grid.get("SFT end (no reset)", end)
    loss = ood_difference(peak, end)
    lost = loss[0] > 0  # SFT lost OOD accuracy beyond the evaluation noise
    verdict = "supported" if sft["peak_step"] < sft["end_step"] and lost else (
        "mixed" if peak["ood"]["mean"] > end["ood"]["mean"] else "not supported")
    out.append({"claim": "OOD accuracy peaks early in SFT and then decays", "verdict": verdict,
                "evidence": f"OOD {_pct(peak['ood']['mean'])} at step {sft['peak_step']} vs "
                            f"{_pct(end['ood']['mean'])} at the end (step {sft['end_step']}) on "
                            f"{end['ood'].get('n', '?')} test hands each; difference {_points(loss)} "
                            f"(95%); ID {_pct(peak['id']['mean'])} → {_pct(end['id']['mean'])}."})
    noise = ("" if lost else f" Not testable here: SFT's OOD loss {_points(loss)} is within the "
             "evaluation noise, so a share of it recovered is not meaningful.")

    def recovery_verdict(rec):
        return _verdict_recovery(rec) if lost else "not testable"

    ppo_rows = [r for r in table if r["kind"] == "ppo"]
    if ppo_rows:
        by_start: dict = {}
        for run in outputs.get("ppo", {}).get("runs", []):
            row = next((r for r in ppo_rows if r["name"] == f"PPO from {run['label']}"), None)
            if row is not None:
                by_start.setdefault(run["start"], []).append(row)
        means = {start: (sum(r["ood"]["mean"] for r in rows) / len(rows),
                         _mean_or_none([r["recovered"] for r in rows]), len(rows))
                 for start, rows in by_start.items()}
        # restoring needs something lost: judge the starts after the peak (PPO from the peak
        # itself starts with nothing to restore); all starts when there is none
        steps = {run["start"]: run["start_step"] for run in outputs.get("ppo", {}).get("runs", [])}
        judged = {k: m for k, m in means.items() if steps.get(k, 0) > sft["peak_step"]} or means
        best = max(judged.values(), key=lambda m: m[1] if m[1] is not None else -9)[1] if judged else None
        text = "; ".join(f"from {start} ({n} seed{'s' if n > 1 else ''}): mean OOD {_pct(ood)}, "
                         f"mean recovered {_pct(rec)}" for start, (ood, rec, n) in means.items())
        text += f"; verdict from the start{'s' if len(judged) > 1 else ''} {', '.join(judged)}"
        out.append({"claim": "PPO on ID hands restores most of the OOD accuracy SFT lost",
                    "verdict": recovery_verdict(best), "evidence": text + "." + noise})
    else:
        out.append({"claim": "PPO on ID hands restores most of the OOD accuracy SFT lost",
                    "verdict": "not tested", "evidence": "no PPO run in this study."})
    shapes = first_update_summary(advantage_groups or {})
    if shapes:
        def shape(s):
            spread = "" if s["spread"] is None else f", 5–95% spread {s['spread']:.2f}"
            return f"skewness {s['skewness']:+.2f}, share positive {_pct(s['positive_share'])}{spread}"

        out.append({"claim": "The starts PPO can restore from have a flat advantage distribution",
                    "verdict": "reported",
                    "evidence": "first update, seed means: " + "; ".join(
                        f"from {start}: {shape(s)}" for start, s in shapes.items())
                    + ". Compare with the PPO rows above; the figure shows every update."})
    analysis = outputs.get("analysis", {}).get("summary", {}).get("base", [])
    end_rows = [r for r in analysis if r["target"] == f"sft_{sft['end_step']}"]
    drift, null_drift = _mean_metric(end_rows, "sigma_drift"), _mean_metric(end_rows, "null_sigma_drift")
    rot, null_rot = _mean_metric(end_rows, "chordal_norm_u"), _mean_metric(end_rows, "null_chordal_norm_u")
    if drift is not None and rot is not None:
        ratio = rot / null_rot if null_rot else None
        verdict = "supported" if drift < 0.05 and ratio and ratio > 1.5 else "mixed"
        out.append({"claim": "Singular values barely move while singular vectors rotate",
                    "verdict": verdict,
                    "evidence": f"SFT end vs base: mean Σ drift {_pct(drift)} (matched-norm null "
                                f"{_pct(null_drift)}); normalized chordal distance of top-k U "
                                f"{rot:.3f} (null {null_rot:.3f}, ratio {ratio:.2f}). A ratio near 1 "
                                "means a random change of the same size rotates as much."})
    for prefix, claim in (("UV merge top 20%", "Restoring the reference's top-20% singular directions "
                           "(target Σ kept) recovers much of the lost OOD accuracy"),
                          ("layer reset first 25%", "Resetting the first 25% of layers recovers much of "
                           "the lost OOD accuracy")):
        r = _find(table, prefix)
        if r:
            gain = ood_difference(grid[r["name"]], end) if r["name"] in grid else (float("nan"),) * 2
            out.append({"claim": claim, "verdict": recovery_verdict(r["recovered"]),
                        "evidence": f"OOD {_pct(r['ood']['mean'])} (CI {_pct(r['ood']['ci'][0])}–"
                                    f"{_pct(r['ood']['ci'][1])}), ID {_pct(r['id']['mean'])}; vs SFT end "
                                    f"{_points(gain)}; recovered {_pct(r['recovered'])} of the lost OOD."
                                    + noise})
    r = _find(table, "Σ-only")
    if r:
        gain = ood_difference(grid[r["name"]], end) if r["name"] in grid else (float("nan"),) * 2
        unchanged = gain[0] <= 0 <= gain[1]
        out.append({"claim": "Restoring singular values only (Σ-only) changes nothing",
                    "verdict": "supported" if unchanged else "not supported",
                    "evidence": f"OOD {_pct(r['ood']['mean'])} vs SFT end {_points(gain)}."})
    auto = outputs.get("autoselect")
    if auto:
        out.append({"claim": "(rotax) an automatically selected reset, chosen on probe hands only",
                    "verdict": "reported",
                    "evidence": f"chose '{auto['chosen']}' in {auto['search_seconds']:.0f} s; test OOD "
                                f"{_pct(auto['test']['ood']['mean'])}, ID {_pct(auto['test']['id']['mean'])}."})
    return out
