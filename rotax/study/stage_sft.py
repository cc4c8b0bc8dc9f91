"""The SFT stage of `rotax study`."""

from __future__ import annotations

from rotax.sft.loop import train as train_sft
from rotax.study.context import StudyContext
from rotax.study.curve import tracked_curve
from rotax.tasks.points import Rule, toy
from rotax.tasks.points.accuracy import study_hands


def run(ctx: StudyContext, outputs: dict) -> dict:
    """SFT on a finite pool of ID hands, the ID/OOD curve along the way; picks the peak-OOD,
    mid and end checkpoints the later stages start from."""
    config, s = ctx.config, ctx.config.study
    pool_hands = study_hands(Rule.ID, 7, s.sft_pool_hands, ctx.ranks)
    source = toy.hand_pool_source([(h, Rule.ID) for h in pool_hands], ctx.tokenizer, ctx.renderer,
                                  batch_size=config.sft.batch_size, bucket=config.data.bucket,
                                  max_length=config.data.max_length,
                                  solution_choice=config.data.solution_choice)
    curve, hook = tracked_curve(ctx, ctx.run_dir / "sft" / "curve.jsonl")  # survives a resume

    result = train_sft(config, ctx.model_cfg, ctx.base_params(), source, mesh=ctx.mesh, resume=True,
                       run_dir=ctx.run_dir / "sft", eval_hook=hook,
                       run_metadata={"source": str(ctx.base_dir)})
    steps = sorted(result.checkpoints)
    evaluated = [c["step"] for c in curve if c["step"] in steps]
    peak = max(curve, key=lambda c: (c["ood"]["mean"], -c["step"]))["step"] if curve else steps[-1]
    end = steps[-1]
    later = [st for st in evaluated if peak < st < end]
    mid = later[len(later) // 2] if later else end
    return {"checkpoints": steps, "curve": curve, "peak_step": peak, "mid_step": mid, "end_step": end,
            "pool_hands": len(pool_hands)}
