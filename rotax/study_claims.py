"""One paragraph per claim of the papers, with a verdict computed from this run's numbers."""

from __future__ import annotations


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _verdict_recovery(rec, lo_ok: float = 0.5) -> str:
    if rec is None:
        return "not tested"
    return "supported" if rec >= lo_ok else ("mixed" if rec >= 0.2 else "not supported")


def _find(table, prefix):
    return next((r for r in table if r["name"].startswith(prefix)), None)


def _mean_metric(summary_rows, metric):
    values = [r[metric] for r in summary_rows if metric in r]
    return sum(values) / len(values) if values else None


def claims(ctx, outputs: dict, table: list) -> list[dict]:
    out = []
    sft = outputs["sft"]
    curve = {c["step"]: c for c in sft["curve"]}
    peak, end = curve[sft["peak_step"]], curve[sft["end_step"]]
    separated = peak["ood"]["ci"][0] > end["ood"]["ci"][1]
    verdict = "supported" if sft["peak_step"] < sft["end_step"] and separated else (
        "mixed" if peak["ood"]["mean"] > end["ood"]["mean"] else "not supported")
    out.append({"claim": "OOD accuracy peaks early in SFT and then decays", "verdict": verdict,
                "evidence": f"OOD {_pct(peak['ood']['mean'])} at step {sft['peak_step']} vs "
                            f"{_pct(end['ood']['mean'])} at the end (step {sft['end_step']}); ID "
                            f"{_pct(peak['id']['mean'])} → {_pct(end['id']['mean'])}; the 95% intervals "
                            f"{'do not' if separated else 'do'} overlap."})
    ppo_rows = [r for r in table if r["kind"] == "ppo"]
    if ppo_rows:
        best = max(ppo_rows, key=lambda r: r["recovered"] if r["recovered"] is not None else -9)
        text = "; ".join(f"{r['name']}: OOD {_pct(r['ood']['mean'])}, recovered {_pct(r['recovered'])}"
                         for r in ppo_rows)
        out.append({"claim": "PPO on ID hands restores most of the OOD accuracy SFT lost",
                    "verdict": _verdict_recovery(best["recovered"]), "evidence": text + "."})
    else:
        out.append({"claim": "PPO on ID hands restores most of the OOD accuracy SFT lost",
                    "verdict": "not tested", "evidence": "no PPO run in this study."})
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
            out.append({"claim": claim, "verdict": _verdict_recovery(r["recovered"]),
                        "evidence": f"OOD {_pct(r['ood']['mean'])} (CI {_pct(r['ood']['ci'][0])}–"
                                    f"{_pct(r['ood']['ci'][1])}), ID {_pct(r['id']['mean'])}; recovered "
                                    f"{_pct(r['recovered'])} of the lost OOD."})
    r = _find(table, "Σ-only")
    if r:
        small = r["recovered"] is None or abs(r["recovered"]) < 0.25
        out.append({"claim": "Restoring singular values only (Σ-only) changes nothing",
                    "verdict": "supported" if small else "not supported",
                    "evidence": f"OOD {_pct(r['ood']['mean'])}, recovered {_pct(r['recovered'])}."})
    auto = outputs.get("autoselect")
    if auto:
        out.append({"claim": "(rotax) an automatically selected reset, chosen on probe hands only",
                    "verdict": "reported",
                    "evidence": f"chose '{auto['chosen']}' in {auto['search_seconds']:.0f} s; test OOD "
                                f"{_pct(auto['test']['ood']['mean'])}, ID {_pct(auto['test']['id']['mean'])}."})
    return out
