"""The reset grid and the auto-selected reset of `rotax study`.

Target: the SFT end checkpoint. Reference: the peak-OOD SFT checkpoint (the study's choice) or
the base (``study.reset_reference``). Every variant is evaluated on ``study.reset_hands`` ID and
OOD hands per seed; auto-select searches layer ranges × rank fractions on a *probe* set whose
hands come from seeds disjoint from the test sets, then reports the winner on the test sets.
"""

from __future__ import annotations

import time

import jax

from rotax.analysis import resets
from rotax.analysis.selectors import Selector

PROBE_SEED_OFFSET = 5000  # probe hands: seeds 5000+, test hands: seeds 1000+


def reset_variants(num_hidden_layers: int, has_head: bool):
    """``[(name, kind, detail, fn(target, reference, layer_kwargs) -> params)]``: the grid."""
    every = Selector()
    out = []
    for pct in (10, 20, 50):
        out.append((f"UV merge top {pct}%", "uv", f"reference U,V top {pct}%, target Σ",
                    lambda t, r, kw, f=pct / 100: resets.uv_merge(t, r, every, f, **kw)))
    out.append(("UV merge top+tail 20%", "uv", "reference U,V top and bottom 20%, target Σ",
                lambda t, r, kw: resets.uv_merge(t, r, every, 0.2, 0.2, **kw)))
    out.append(("triplet swap top 20%", "swap", "reference U,Σ,V top 20%",
                lambda t, r, kw: resets.triplet_swap(t, r, every, 0.2, **kw)))
    out.append(("Σ-only top 20% (control)", "sigma", "reference σ in the top 20% slots",
                lambda t, r, kw: resets.sigma_only(t, r, every, 0.2, **kw)))
    for q, spec in enumerate(("first 25%", "25%-50%", "50%-75%", "last 25%")):
        out.append((f"layer reset {spec}", "layers", "whole layers incl. norms",
                    lambda t, r, kw, s=spec: resets.reset_layers(t, r, _quarter(s, num_hidden_layers), **kw)))
    out.append(("layer reset first 25% + embed/head", "layers", "also embeddings and LM head",
                lambda t, r, kw: resets.reset_layers(t, r, "first 25%", include_embeddings=True,
                                                     include_head=has_head, **kw)))
    return out


def _quarter(spec: str, total: int) -> str:
    if spec.startswith(("first", "last")):
        return spec
    lo, hi = (int(x.rstrip("%")) for x in spec.split("-"))
    start, stop = round(total * lo / 100), round(total * hi / 100)
    return f"{start}-{max(start, stop - 1)}"


#: the grid rows every further SFT seed also gets (those the claims judge)
SEED_ROWS = ("UV merge top 20%", "Σ-only top 20% (control)", "layer reset first 25%")


def _row(name, kind, detail, acc, seconds, sft_seed=0):
    return {"name": name, "kind": kind, "detail": detail, "id": acc["id"], "ood": acc["ood"],
            "seconds": seconds, "sft_seed": sft_seed}


def _seed_rows(ctx, sft: dict) -> list[dict]:
    """SFT seed ``i`` > 0: its end and peak and the claim resets (:data:`SEED_ROWS`) on the
    same test hands."""
    s, i = ctx.config.study, sft["sft_seed"]
    target, peak = ctx.sft_params(sft["end_step"], i), ctx.sft_params(sft["peak_step"], i)
    reference = ctx.base_params() if s.reset_reference == "base" else peak
    cfg = ctx.model_cfg
    kw = {"layer_ids": cfg.layer_ids, "num_hidden_layers": cfg.num_hidden_layers}
    rows = [_row("SFT end (no reset)", "target", f"step {sft['end_step']}", ctx.evaluate_test(target), 0.0, i),
            _row("SFT peak-OOD (no reset)", "peak", f"step {sft['peak_step']}", ctx.evaluate_test(peak), 0.0, i)]
    for name, kind, detail, fn in reset_variants(cfg.num_hidden_layers, not cfg.tie_word_embeddings):
        if name in SEED_ROWS:
            began = time.perf_counter()
            edited = jax.block_until_ready(fn(target, reference, kw))
            rows.append(_row(name, kind, detail, ctx.evaluate_test(edited), time.perf_counter() - began, i))
    return rows


def run_reset_grid(ctx, outputs: dict) -> dict:
    s, sft = ctx.config.study, outputs["sft"]
    target = ctx.sft_params(sft["end_step"])
    # the peak is also measured on the test hands: the denominator of "% of lost OOD recovered"
    peak = ctx.sft_params(sft["peak_step"])
    reference = ctx.base_params() if s.reset_reference == "base" else peak
    cfg = ctx.model_cfg
    kw = {"layer_ids": cfg.layer_ids, "num_hidden_layers": cfg.num_hidden_layers}
    evaluate = ctx.evaluate_test
    rows = [_row("SFT end (no reset)", "target", f"step {sft['end_step']}", evaluate(target), 0.0),
            _row("SFT peak-OOD (no reset)", "peak", f"step {sft['peak_step']}", evaluate(peak), 0.0),
            _row("reset k=0 (identity check)", "uv", "UV merge with k=0",
                 evaluate(resets.uv_merge(target, reference, Selector(), 0, **kw)), 0.0)]
    for name, kind, detail, fn in reset_variants(cfg.num_hidden_layers, not cfg.tie_word_embeddings):
        began = time.perf_counter()
        edited = jax.block_until_ready(fn(target, reference, kw))
        seconds = time.perf_counter() - began
        rows.append(_row(name, kind, detail, evaluate(edited), seconds))
    for run in outputs.get("ppo", {}).get("runs", []):
        if run.get("start") == "end" and not run.get("sft_seed"):  # the reverse test: SFT-end directions onto the PPO model
            ppo_params = ctx.load_ppo_params(run)
            edited = resets.uv_merge(ppo_params, target, Selector(), 0.2, **kw)
            rows.append(_row(f"reverse test ({run['label']})", "reverse",
                             "SFT-end top-20% directions onto the PPO model", evaluate(edited), None))
            break
    for extra in outputs["sft"].get("seeds", [])[1:]:
        rows += _seed_rows(ctx, extra)
    return {"reference": s.reset_reference, "rows": rows}


def run_autoselect(ctx, outputs: dict) -> dict:
    """Greedy grid over layer ranges × rank fractions (UV merge) plus whole-layer resets of the
    same ranges, scored on probe hands by OOD accuracy, ID accuracy as tie-break."""
    s, sft = ctx.config.study, outputs["sft"]
    began = time.perf_counter()
    target = ctx.sft_params(sft["end_step"])
    reference = ctx.base_params() if s.reset_reference == "base" else ctx.sft_params(sft["peak_step"])
    cfg = ctx.model_cfg
    kw = {"layer_ids": cfg.layer_ids, "num_hidden_layers": cfg.num_hidden_layers}
    candidates = []
    for layers in s.autoselect_layers:
        for rank in s.autoselect_ranks:
            candidates.append((f"UV merge top {rank:.0%} of layers {layers}",
                               lambda t, r, l=layers, k=rank: resets.uv_merge(t, r, Selector(layers=l), k, **kw)))
        candidates.append((f"layer reset {layers}",
                           lambda t, r, l=layers: resets.reset_layers(t, r, l, **kw)))
    scored = []
    for name, fn in candidates:
        acc = ctx.evaluate_id_ood(fn(target, reference), n=s.probe_hands, seeds=(0,),
                                  seed_offset=PROBE_SEED_OFFSET)
        scored.append({"name": name, "probe_id": acc["id"]["mean"], "probe_ood": acc["ood"]["mean"]})
    best_index = max(range(len(scored)), key=lambda i: (scored[i]["probe_ood"], scored[i]["probe_id"]))
    search_seconds = time.perf_counter() - began
    chosen = candidates[best_index][1](target, reference)
    test = ctx.evaluate_test(chosen)
    return {"chosen": scored[best_index]["name"], "candidates": scored, "search_seconds": search_seconds,
            "test": test}
