"""The reset grid of `rotax study` (the auto-selected reset is the gate's: stage_autoselect).

Target: the SFT end checkpoint. Reference: the peak-OOD SFT checkpoint (the study's choice) or
the base (``study.reset_reference``). Every variant is evaluated on ``study.reset_hands`` ID and
OOD hands per seed (auto-select, the gate's search on probe hands, is
:mod:`rotax.study.stage_autoselect`).

``study.reset_grid`` picks the grid: ``rotax`` (:func:`reset_variants`) or ``reference``
(:func:`reference_reset_variants`: the arms of the study's scripts ``analysis/svd_recover_dir.py``,
``svd_recover.py``, ``svd_recover_by_layer*.py`` and their launchers).
"""

from __future__ import annotations

import time

import jax

from rotax.analysis import resets
from rotax.analysis.selectors import Selector

RESET_GRIDS = ("rotax", "reference")
#: the study's K_TOP of its layer resets and reverse test: with min(k, n) a full revert of every
#: matrix of Llama-3.2-11B (n <= 4096) and Qwen2.5-7B (n <= 3584)
REFERENCE_FULL_RANK = 4096


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


def reference_reset_variants(study):
    """The study's arms: UV merge and triplet swap of *every* 2-D tensor (embeddings and LM
    head included) at the absolute ranks ``study.reference_ranks`` (``min(k, n)``), and the
    2-D-only layer resets of ``study.reference_layer_ranges`` at rank
    :data:`REFERENCE_FULL_RANK` (norms and biases kept; embeddings and head also when
    ``study.reference_layer_embed_head``, as its Llama script's parameter names allow)."""
    every = Selector(modules="all")
    out = []
    for k in study.reference_ranks:
        out.append((f"UV merge top {k}, all 2-D", "uv", f"reference U,V top min({k}, n), target Σ; embed/head too",
                    lambda t, r, kw, k=int(k): resets.uv_merge(t, r, every, k, clamp_ranks=True, **kw)))
    for k in study.reference_ranks:
        out.append((f"triplet swap top {k}, all 2-D", "swap", f"reference U,Σ,V top min({k}, n); embed/head too",
                    lambda t, r, kw, k=int(k): resets.triplet_swap(t, r, every, k, clamp_ranks=True, **kw)))
    modules = "all" if study.reference_layer_embed_head else None
    for spec in study.reference_layer_ranges:
        extra = " and embed/head" if modules else ""
        out.append((f"layer reset {spec}, 2-D only", "layers", f"matrices of layers {spec}{extra} reverted; norms kept",
                    lambda t, r, kw, s=Selector(layers=spec, modules=modules): resets.uv_merge(
                        t, r, s, REFERENCE_FULL_RANK, clamp_ranks=True, **kw)))
    return out


def _quarter(spec: str, total: int) -> str:
    if spec.startswith(("first", "last")):
        return spec
    lo, hi = (int(x.rstrip("%")) for x in spec.split("-"))
    start, stop = round(total * lo / 100), round(total * hi / 100)
    return f"{start}-{max(start, stop - 1)}"


#: per reset grid, the row each reset claim judges: claim id -> row-name prefix (the grid's first
#: row with that prefix). The reference grid has no Σ-only control: that claim is not made there.
CLAIM_ROWS = {
    "rotax": {"uv_merge_recovers": "UV merge top 20%", "layer_reset_recovers": "layer reset first 25%",
              "sigma_only_null": "Σ-only top 20%"},
    "reference": {"uv_merge_recovers": "UV merge top", "layer_reset_recovers": "layer reset"},
}


def grid_variants(study, num_hidden_layers: int, has_head: bool):
    """The variants of ``study.reset_grid`` (refused by name when unknown)."""
    if study.reset_grid not in RESET_GRIDS:
        raise ValueError(f"study.reset_grid {study.reset_grid!r}: choose one of {RESET_GRIDS}")
    if study.reset_grid == "reference":
        return reference_reset_variants(study)
    return reset_variants(num_hidden_layers, has_head)


def claim_rows(names, grid: str) -> dict[str, str]:
    """Claim id -> the first of ``names`` (row names of ``grid``) that the claim judges; a claim
    whose row the grid lacks is left out."""
    chosen = {}
    for claim_id, prefix in CLAIM_ROWS[grid].items():
        name = next((n for n in names if n.startswith(prefix)), None)
        if name is not None:
            chosen[claim_id] = name
    return chosen


def _row(name, kind, detail, acc, seconds, sft_seed=0):
    return {"name": name, "kind": kind, "detail": detail, "id": acc["id"], "ood": acc["ood"],
            "seconds": seconds, "sft_seed": sft_seed}


def _seed_rows(ctx, sft: dict) -> list[dict]:
    """SFT seed ``i`` > 0: its end and peak and the rows the reset claims judge
    (:data:`CLAIM_ROWS`) on the same test hands."""
    s, i = ctx.config.study, sft["sft_seed"]
    target, peak = ctx.sft_params(sft["end_step"], i), ctx.sft_params(sft["peak_step"], i)
    reference = ctx.base_params() if s.reset_reference == "base" else peak
    cfg = ctx.model_cfg
    kw = {"layer_ids": cfg.layer_ids, "num_hidden_layers": cfg.num_hidden_layers}
    rows = [_row("SFT end (no reset)", "target", f"step {sft['end_step']}", ctx.evaluate_test(target), 0.0, i),
            _row("SFT peak-OOD (no reset)", "peak", f"step {sft['peak_step']}", ctx.evaluate_test(peak), 0.0, i)]
    variants = grid_variants(s, cfg.num_hidden_layers, not cfg.tie_word_embeddings)
    judged = set(claim_rows([v[0] for v in variants], s.reset_grid).values())
    for name, kind, detail, fn in variants:
        if name in judged:
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
    variants = grid_variants(s, cfg.num_hidden_layers, not cfg.tie_word_embeddings)  # refused before any evaluation
    evaluate = ctx.evaluate_test
    rows = [_row("SFT end (no reset)", "target", f"step {sft['end_step']}", evaluate(target), 0.0),
            _row("SFT peak-OOD (no reset)", "peak", f"step {sft['peak_step']}", evaluate(peak), 0.0),
            _row("reset k=0 (identity check)", "uv", "UV merge with k=0",
                 evaluate(resets.uv_merge(target, reference, Selector(), 0, **kw)), 0.0)]
    reference_grid = s.reset_grid == "reference"
    for name, kind, detail, fn in variants:
        began = time.perf_counter()
        edited = jax.block_until_ready(fn(target, reference, kw))
        seconds = time.perf_counter() - began
        rows.append(_row(name, kind, detail, evaluate(edited), seconds))
    for run in outputs.get("ppo", {}).get("runs", []):
        if run.get("sft_seed"):  # reverse tests of SFT seed 0's runs: ``target`` is its SFT end
            continue
        if reference_grid:  # the study's reverse test: every 2-D tensor back to the SFT end
            edited = resets.uv_merge(ctx.load_ppo_params(run), target, Selector(modules="all"),
                                     REFERENCE_FULL_RANK, clamp_ranks=True, **kw)
            rows.append(_row(f"reverse test ({run['label']})", "reverse",
                             "every 2-D tensor of the PPO model reverted to the SFT end", evaluate(edited), None))
            continue
        if run.get("start") == "end":  # the reverse test: SFT-end directions onto the PPO model
            ppo_params = ctx.load_ppo_params(run)
            edited = resets.uv_merge(ppo_params, target, Selector(), 0.2, **kw)
            rows.append(_row(f"reverse test ({run['label']})", "reverse",
                             "SFT-end top-20% directions onto the PPO model", evaluate(edited), None))
            break
    for extra in outputs["sft"].get("seeds", [])[1:]:
        rows += _seed_rows(ctx, extra)
    return {"reference": s.reset_reference, "rows": rows}
