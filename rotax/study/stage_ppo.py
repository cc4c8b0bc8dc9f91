"""The PPO stage of `rotax study`: PPO from chosen SFT checkpoints on ID hands, with ID/OOD
evaluation along the way and at the end."""

from __future__ import annotations

import copy


def resolve_starts(starts, sft: dict) -> list[tuple[str, int]]:
    """``[(label, step)]`` for ``study.ppo_starts`` (``peak``/``mid``/``end``/``all``/steps)."""
    named = {"peak": sft["peak_step"], "mid": sft["mid_step"], "end": sft["end_step"]}
    out = []
    for start in starts:
        if start == "all":
            out += [(f"step{s}", s) for s in sft["checkpoints"] if s > 0]
        elif start in named:
            out.append((start, named[start]))
        else:
            out.append((f"step{int(start)}", int(start)))
    seen, unique = set(), []
    for label, step in out:
        if label not in seen:
            seen.add(label)
            unique.append((label, step))
    return unique


def run_ppo_stage(ctx, outputs: dict) -> dict:
    s, sft = ctx.config.study, outputs["sft"]
    runs = []
    for label, step in resolve_starts(s.ppo_starts, sft):
        for seed in range(s.ppo_seeds):
            run_label = label if s.ppo_seeds == 1 else f"{label}_seed{seed}"
            runs.append(_train_one(ctx, run_label, label, step, seed))
    return {"runs": runs}


def _environment(ctx, seed: int):
    from rotax import sampling
    from rotax.rl.rollout import GeneralPointsEnvironment
    from rotax.tasks.points.accuracy import study_hands
    from rotax.tasks.points import Rule

    p = ctx.config.ppo
    ranks = ctx.ranks

    class StudyEnvironment(GeneralPointsEnvironment):
        def hands(self, update: int) -> list:  # the study's deck, fresh hands every update
            return study_hands(Rule.ID, 20_000 + 1000 * seed + update, self.episodes, ranks)

    options = sampling.SamplingOptions(temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                       max_new_tokens=p.max_new_tokens)
    return StudyEnvironment(ctx.tokenizer, ctx.renderer, Rule.ID, p.episodes_per_update, options,
                            attempts=p.attempts, batch_size=p.rollout_batch_size, seed=seed, mesh=ctx.mesh)


def _train_one(ctx, run_label: str, start: str, step: int, seed: int) -> dict:
    from rotax.rl.ppo import loop as ppo_loop
    from rotax.io.hf import export_hf_checkpoint
    from rotax.study.curve import tracked_curve
    from rotax.io.tokenizer import pad_id

    config = copy.deepcopy(ctx.config)
    config.seed = ctx.config.seed + 100 * seed
    run_dir = ctx.run_dir / "ppo" / run_label
    config.run_dir = str(run_dir)
    curve, hook = tracked_curve(ctx, run_dir / "curve.jsonl")

    result = ppo_loop.train(config, ctx.model_cfg, lambda: ctx.sft_params(step), _environment(ctx, seed),
                            mesh=ctx.mesh, resume=True, pad_id=pad_id(ctx.tokenizer),
                            tokenizer=ctx.tokenizer, eval_hook=hook,
                            run_metadata={"source": str(ctx.base_dir), "sft_step": step})
    policy = result.state.params["policy"]
    export_hf_checkpoint(ctx.model_cfg, policy, run_dir / "final_hf", source=ctx.base_dir)  # gathers per tensor
    final = ctx.evaluate_test(policy)
    return {"label": run_label, "start": start, "start_step": step, "seed": seed,
            "curve": curve, "final": final, "run_dir": str(run_dir),
            "policy_dir": str(run_dir / "final_hf"), "updates": result.updates,
            "detail": f"{result.updates} updates from SFT step {step}"}
