"""The SFT stage of `rotax study`: one SFT run per SFT seed (data order)."""

from __future__ import annotations

import copy

from rotax.sft.loop import train as train_sft
from rotax.study.context import StudyContext
from rotax.study.curve import tracked_curve
from rotax.tasks.points import Rule, toy
from rotax.tasks.points.accuracy import study_hands


def run(ctx: StudyContext, outputs: dict) -> dict:
    """SFT on a finite pool of ID hands, once per ``study.sft_seeds`` data order (seed ``i``
    draws its batches with ``config.seed + i``; the pool is the same), each with its own ID/OOD
    curve and peak-OOD, mid and end checkpoints. The output holds seed 0's fields at the top
    (what single-seed readers use) and every seed's in ``seeds``."""
    n = int(ctx.config.study.sft_seeds)
    if n < 1:
        raise ValueError(f"study.sft_seeds={n}: need at least one SFT seed")
    seeds = [_train_seed(ctx, i) for i in range(n)]
    return {**seeds[0], "seeds": seeds}


def _train_seed(ctx: StudyContext, sft_seed: int) -> dict:
    config, s = copy.deepcopy(ctx.config), ctx.config.study
    config.seed = ctx.config.seed + sft_seed
    pool_hands = study_hands(Rule.ID, 7, s.sft_pool_hands, ctx.ranks)
    source = toy.hand_pool_source([(h, Rule.ID) for h in pool_hands], ctx.tokenizer, ctx.renderer,
                                  batch_size=config.sft.batch_size, bucket=config.data.bucket,
                                  max_length=config.data.max_length,
                                  solution_choice=config.data.solution_choice)
    run_dir = ctx.sft_dir(sft_seed)
    curve, hook = tracked_curve(ctx, run_dir / "curve.jsonl")  # survives a resume

    result = train_sft(config, ctx.model_cfg, ctx.base_params(), source, mesh=ctx.mesh, resume=True,
                       run_dir=run_dir, eval_hook=hook, run_metadata=ctx.checkpoint_metadata())
    steps = sorted(result.checkpoints)
    evaluated = [c["step"] for c in curve if c["step"] in steps]
    peak = max(curve, key=lambda c: (c["ood"]["mean"], -c["step"]))["step"] if curve else steps[-1]
    end = steps[-1]
    later = [st for st in evaluated if peak < st < end]
    mid = later[len(later) // 2] if later else end
    return {"sft_seed": sft_seed, "checkpoints": steps, "curve": curve, "peak_step": peak, "mid_step": mid,
            "end_step": end, "pool_hands": len(pool_hands)}
