"""Turns the study's stage outputs into the report summary: the headline table, the figures
and one paragraph per claim of the papers, each verdict computed from this run's numbers."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rotax.study.advantage_panel import advantage_figure, by_start  # noqa: E402
from rotax.study.claims import claims  # noqa: E402
from rotax.study.report import recovered_fraction  # noqa: E402
from rotax.study.seeds import headline_table, merge_claims, seed_views  # noqa: E402
from rotax.study.stage_autoselect import gate_notes  # noqa: E402


def _cell(acc: dict) -> dict:
    out = {"mean": acc["mean"], "ci": acc["ci"]}
    if acc.get("face_as_id") is not None:  # OOD hands with a face card read under the ID rule (as 10)
        out["face_as_id"] = acc["face_as_id"]
    return out


def _curve_figure(curve: list, path: Path, title: str, xlabel: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    xs = [c["step"] for c in curve]
    for split, color in (("id", "tab:blue"), ("ood", "tab:red")):
        ys = [c[split]["mean"] for c in curve]
        lo = [c[split]["ci"][0] for c in curve]
        hi = [c[split]["ci"][1] for c in curve]
        ax.plot(xs, ys, "o-", color=color, label=split.upper())
        ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(title)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_summary(ctx, outputs: dict) -> dict:
    """The headline table (means over SFT seeds), per-seed tables, claims merged over seeds,
    figures and notes."""
    run_dir = ctx.run_dir
    views = seed_views(outputs)
    tables = [(i, seed_table(ctx, view)) for i, view in views]
    advantage_groups = by_start([r for r in outputs.get("ppo", {}).get("runs", []) if not r.get("sft_seed")])
    per_seed_claims = [(i, claims(ctx, view, table, advantage_groups if i == 0 else None, spectra=i == 0))
                       for (i, view), (_, table) in zip(views, tables)]
    sft = outputs["sft"]
    figures = [{"path": str(_curve_figure(sft["curve"], run_dir / "sft_curve.png",
                                          "SFT on the ID rule", "SFT step").relative_to(run_dir)),
                "caption": "ID/OOD accuracy along SFT (95% Wilson intervals), SFT seed 0"}]
    for extra in sft.get("seeds", [])[1:]:
        path = _curve_figure(extra["curve"], run_dir / f"sft_curve_seed{extra['sft_seed']}.png",
                             f"SFT on the ID rule (SFT seed {extra['sft_seed']})", "SFT step")
        figures.append({"path": str(path.relative_to(run_dir)), "caption": f"SFT seed {extra['sft_seed']}"})
    for run in outputs.get("ppo", {}).get("runs", []):
        if run.get("curve") and not run.get("sft_seed"):
            path = _curve_figure(run["curve"], run_dir / f"ppo_curve_{run['label']}.png",
                                 f"PPO from {run['label']}", "PPO update")
            figures.append({"path": str(path.relative_to(run_dir)), "caption": f"PPO from {run['label']}"})
    advantages = advantage_figure(advantage_groups, run_dir / "ppo_advantages.png")
    if advantages is not None:
        figures.append({"path": str(advantages.relative_to(run_dir)),
                        "caption": "PPO: distribution of the raw advantages per update (fan: first seed), "
                                   "its skewness and share positive (every seed), per start"})
    for f in outputs.get("analysis", {}).get("figures", []):
        name = Path(f).name
        if name == "drift_vs_rotation.png" or f"sft_{sft['end_step']}" in name:
            figures.append({"path": str(Path(f).relative_to(run_dir)), "caption": f"{Path(f).parent.name}: {name}"})
    curves = [{"sft_seed": e.get("sft_seed", 0),
               "points": [{"step": c["step"], "id": c["id"]["mean"], "ood": c["ood"]["mean"],
                           "face_as_id": c["ood"].get("face_as_id")} for c in e["curve"]]}
              for e in sft.get("seeds", [sft])]
    return {"name": run_dir.name, "table": headline_table(tables), "claims": merge_claims(per_seed_claims),
            "seed_tables": [{"sft_seed": i, "table": t} for i, t in tables] if len(tables) > 1 else [],
            "sft_curves": curves, "figures": figures,
            "stage_seconds": {k: v.get("seconds", 0.0) for k, v in outputs.items() if isinstance(v, dict)},
            "notes": [f"Deck: {ctx.config.study.deck}; attempts per hand: {ctx.config.study.attempts}; "
                      f"reset reference: {ctx.config.study.reset_reference}; SFT seeds: {len(tables)}"
                      f"{' (headline: means over SFT seeds, intervals include the seed-to-seed spread; per-seed tables in the appendix)' if len(tables) > 1 else ''}. "
                      f"Recovered = (x − SFT end OOD) / (SFT peak OOD − SFT end OOD); for PPO, x − its start's OOD.",
                      *gate_notes(outputs)]}


def seed_table(ctx, outputs: dict) -> list[dict]:
    """The table of one SFT seed (``outputs`` as :func:`rotax.study.seeds.seed_views` gives it)."""
    sft, resets_out, auto = outputs["sft"], outputs.get("resets", {}), outputs.get("autoselect", {})
    curve = {c["step"]: c for c in sft["curve"]}
    base_eval = outputs["base"]["eval"]
    rows_by_name = {r["name"]: r for r in resets_out.get("rows", [])}
    end_row = rows_by_name.get("SFT end (no reset)")
    peak_row = rows_by_name.get("SFT peak-OOD (no reset)")
    peak, end = curve.get(sft["peak_step"]), curve.get(sft["end_step"])
    # peak and end on the same test hands when the reset stage measured them
    peak_ood, end_ood = (peak_row or peak)["ood"]["mean"], (end_row or end)["ood"]["mean"]

    def row(name, kind, acc_id, acc_ood, detail="", seconds=None, lost_from=None):
        # a recovered share is about edits and PPO, not about the base or the SFT rows; PPO's is
        # measured from its own start checkpoint (``lost_from``), an edit's from the SFT end
        start = end_ood if lost_from is None else lost_from
        recovered = None if kind in ("base", "sft", "peak", "target") else \
            recovered_fraction(None, peak_ood, start, acc_ood["mean"])
        return {"name": name, "kind": kind, "id": _cell(acc_id), "ood": _cell(acc_ood),
                "recovered": recovered,
                "seconds": seconds, "detail": detail}

    table = [row("base", "base", base_eval["id"], base_eval["ood"], f"{ctx.config.study.eval_hands} hands")]
    if not (peak_row and end_row):  # without the reset grid's test-hand rows: the curve's
        table += [row(f"SFT peak-OOD (step {sft['peak_step']})", "sft", peak["id"], peak["ood"],
                      f"{ctx.config.study.eval_hands} curve hands"),
                  row(f"SFT end (step {sft['end_step']})", "sft", end["id"], end["ood"],
                      f"{ctx.config.study.eval_hands} curve hands")]
    starts = {sft["peak_step"]: peak_ood, sft["end_step"]: end_ood}
    for run in outputs.get("ppo", {}).get("runs", []):
        start = (run.get("start_test") or {}).get("ood", {}).get("mean", starts.get(run["start_step"]))
        table.append(row(f"PPO from {run['label']}", "ppo", run["final"]["id"], run["final"]["ood"],
                         run.get("detail", ""), run.get("seconds"), lost_from=start))
    for c in outputs.get("ppo", {}).get("controls", []):
        start = (c.get("start_test") or {}).get("ood", {}).get("mean", starts.get(c["start_step"]))
        table.append(row(f"control: {c['name']}", "control", c["final"]["id"], c["final"]["ood"],
                         c.get("detail", ""), c.get("seconds"), lost_from=start))
    for r in resets_out.get("rows", []):
        table.append(row(r["name"], r["kind"], r["id"], r["ood"], r["detail"], r["seconds"]))
    if auto:
        table.append(row(f"auto-select: {auto['chosen']}", "auto", auto["test"]["id"], auto["test"]["ood"],
                         f"{len(auto['candidates'])} candidates on probe hands",
                         auto["search_seconds"]))
    return table
