"""The auto-select stage of `rotax study`: the gate (``rotax.gate``) on the study's models.

Reference (``study.reset_reference``: the peak-OOD SFT checkpoint or the base) → SFT end: the
gate's diagnosis, candidate search and decision, with OOD probe hands as the probe and ID probe
hands as the ID probe (selection half: seed 5000, report half: seed 5001 — disjoint from the
curve and test hands). The chosen reset is then measured on the test hands like every reset.
For each SFT checkpoint PPO started from, the chosen operator is applied to that checkpoint and
decided on the same report hands, beside the PPO policy scored on those hands too (paired).
"""

from __future__ import annotations

import time

import numpy as np

from rotax.analysis.subspace import rank_setting
from rotax.gate.pipeline import GateSettings, decide_on_report, gate
from rotax.stats.intervals import decode_outcomes, recovered_share_interval
from rotax.tasks.points import Rule

PROBE_SEED_OFFSET = 5000  # probe hands: seeds 5000+, test hands: 1100+, curve hands: 1000+


def _scorer(ctx, rule, half: int):
    s = ctx.config.study

    def score(params) -> np.ndarray:
        acc = ctx.evaluate(params, rule, n=s.probe_hands, seeds=(half,), seed_offset=PROBE_SEED_OFFSET)
        return decode_outcomes(acc["outcomes"]).astype(np.float64)

    return score


def settings_of(study) -> GateSettings:
    """The gate's settings from the ``study`` section."""
    return GateSettings(budget_s=float(study.autoselect_budget_s),
                        operators=tuple(study.autoselect_operators),
                        fixed_layers=tuple(study.autoselect_layers),
                        ranks=tuple(float(r) for r in study.autoselect_ranks),
                        k=rank_setting(study.analysis_k), null_seeds=int(study.null_seeds) or 1,
                        progress=bool(study.progress))


def run(ctx, outputs: dict) -> dict:
    """``{"chosen", "candidates", "search_seconds", "test", "gate", "by_start"}``."""
    s, sft = ctx.config.study, outputs["sft"]
    began = time.perf_counter()
    target = ctx.sft_params(sft["end_step"])
    reference = ctx.base_params() if s.reset_reference == "base" else ctx.sft_params(sft["peak_step"])
    settings = settings_of(s)
    ood = (_scorer(ctx, Rule.OOD, 0), _scorer(ctx, Rule.OOD, 1))
    id_ = (_scorer(ctx, Rule.ID, 0), _scorer(ctx, Rule.ID, 1))
    result = gate(ctx.model_cfg, reference, target, ood, binary=True, settings=settings,
                  id_scorers=id_, began=began)
    chosen = result["chosen_candidate"]
    test = ctx.evaluate_test(result["repaired"])
    keep = ("decision", "reason", "recovered", "recovered_interval", "lost", "lost_interval",
            "id_cost", "id_cost_interval", "target", "max_id_cost", "probe", "id_probe",
            "diagnosis", "chosen", "seconds")
    out = {"chosen": chosen.name if chosen else "none (nothing scored)",
           "candidates": result["candidates"], "search_seconds": result["search_seconds"],
           "test": test, "gate": {k: result[k] for k in keep}, "by_start": []}
    if chosen is not None:
        out["by_start"] = _by_start(ctx, outputs, reference, chosen, ood[1], settings, result)
    return out


def _by_start(ctx, outputs, reference, chosen, report, settings, result) -> list[dict]:
    """Per PPO run: the gate's decision on its start checkpoint (the chosen operator applied
    to it; OOD probe only, no ID cost) and PPO's own recovered share on the same report hands."""
    rows, decided = [], {}
    base_scores = result["base_scores"]
    for run in outputs.get("ppo", {}).get("runs", []):
        if run.get("sft_seed"):  # the gate ran on SFT seed 0's checkpoints
            continue
        step = run["start_step"]
        if step not in decided:
            start = ctx.sft_params(step)
            verdict = decide_on_report(reference, start, chosen.apply(start, reference, ctx.model_cfg),
                                       report, binary=True, settings=settings, base_scores=base_scores)
            decided[step] = (verdict, report(start))
        verdict, start_scores = decided[step]
        ppo_scores = report(ctx.load_ppo_params(run))
        ppo = recovered_share_interval(ppo_scores, start_scores, base_scores, draws=settings.draws,
                                       seed=settings.seed)
        rows.append({"run": run["label"], "start": run["start"], "start_step": step,
                     "decision": verdict["decision"], "reason": verdict["reason"],
                     "reset_recovered": verdict["recovered"],
                     "reset_recovered_interval": verdict["recovered_interval"],
                     "start_ood": float(np.mean(start_scores)), "ppo_ood": float(np.mean(ppo_scores)),
                     "reference_ood": float(np.mean(base_scores)),
                     "ppo_recovered": ppo["estimate"], "ppo_recovered_interval": ppo["interval"]})
    return rows


def _pct(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{100 * x:.0f}%"


def gate_notes(outputs: dict) -> list[str]:
    """Report paragraphs: the gate's decision on the SFT end, and per PPO start the gate's
    call beside what PPO then did (same report hands)."""
    auto = outputs.get("autoselect") or {}
    g = auto.get("gate")
    if not g:
        return []
    chosen = (g.get("chosen") or {}).get("name", "none")
    lines = [f"Gate (rotax gate, reference → SFT end): decision **{g['decision']}** with '{chosen}' — "
             f"{g['reason']}; recovered {_pct(g['recovered'])} "
             f"[{_pct(g['recovered_interval'][0])}, {_pct(g['recovered_interval'][1])}] of the OOD "
             f"probe loss on the report half, in {g['seconds']:.0f} s."]
    for row in auto.get("by_start", []):
        lo, hi = row["ppo_recovered_interval"]
        lines.append(
            f"Gate on PPO start {row['start']} (SFT step {row['start_step']}): **{row['decision']}** "
            f"(reset recovers {_pct(row['reset_recovered'])}); PPO run {row['run']} then moved probe OOD "
            f"{100 * row['start_ood']:.1f}% → {100 * row['ppo_ood']:.1f}% (reference "
            f"{100 * row['reference_ood']:.1f}%): recovered {_pct(row['ppo_recovered'])} "
            f"[{_pct(lo)}, {_pct(hi)}].")
    return lines
