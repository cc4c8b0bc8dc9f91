"""The PPO stage of `rotax study`: PPO from chosen SFT checkpoints on ID hands, with ID/OOD
evaluation along the way and at the end."""

from __future__ import annotations

import copy
import functools
import time

from rotax.io.hf import export_hf_checkpoint
from rotax.io.tokenizer import pad_id
from rotax.rl.ppo import loop as ppo_loop
from rotax.study import controls as control_runs
from rotax.study.context import StudyContext
from rotax.study.curve import tracked_curve
from rotax.tasks.points import Rule
from rotax.tasks.points.accuracy import study_hands
from rotax.tasks.points.environment import GeneralPointsEnvironment, environment_settings


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


def run(ctx: StudyContext, outputs: dict) -> dict:
    """PPO from each of ``study.ppo_starts`` × ``study.ppo_seeds``, for every SFT seed (a run's
    ``sft_seed`` says whose checkpoints it starts from; labels repeat across SFT seeds)."""
    s = ctx.config.study
    with_controls = control_seeds(s, outputs["sft"])  # a bad setting is refused before any run
    runs = []
    for sft in outputs["sft"].get("seeds", [outputs["sft"]]):
        sft_seed = sft.get("sft_seed", 0)
        for label, step in resolve_starts(s.ppo_starts, sft):
            # the start's own test-hand accuracy, which PPO's recovery is measured from (the reset
            # grid measures the peak and the end on the same hands already)
            start_test = None if step in (sft["peak_step"], sft["end_step"]) else \
                ctx.evaluate_test(ctx.sft_params(step, sft_seed))
            for seed in range(s.ppo_seeds):
                run_label = label if s.ppo_seeds == 1 else f"{label}_seed{seed}"
                runs.append({**_train_one(ctx, run_label, label, step, seed, sft_seed), "start_test": start_test})
    return {"runs": runs, "controls": _controls(ctx, with_controls, runs)}


def control_seeds(study, sft_output: dict) -> list[dict]:
    """The SFT seeds' outputs the controls start from: the first ``study.control_sft_seeds``
    (0: all)."""
    n = int(study.control_sft_seeds)
    if n < 0:
        raise ValueError(f"study.control_sft_seeds={n}: need 0 (every SFT seed) or more")
    seeds = sft_output.get("seeds", [sft_output])
    return seeds[:n or len(seeds)]


def _controls(ctx: StudyContext, seeds: list[dict], runs: list) -> list[dict]:
    """``study.controls`` from the ``study.control_start`` checkpoint of each of ``seeds`` (SFT
    seed outputs; PPO seed 0's settings), each evaluated on the test hands."""
    s, out = ctx.config.study, []
    for sft in seeds:
        sft_seed = sft.get("sft_seed", 0)
        for control in s.controls:
            label, step = resolve_starts((s.control_start,), sft)[0]
            began = time.perf_counter()
            if control == "continued_sft":
                final, detail = control_runs.continued_sft(ctx, step, sft_seed)
                run = {"final": final, "detail": detail}
            else:
                config, wrap, reference = control_runs.ppo_config(ctx, control)
                run = _train_one(ctx, control, label, step, 0, sft_seed, config=config, wrap=wrap,
                                 reference=reference, subdir="controls")
            start_test = next((r["start_test"] for r in runs if r["start_step"] == step
                               and r.get("sft_seed", 0) == sft_seed), None)
            out.append({**run, "control": control, "name": f"{control_runs.NAMES[control]} (from {label})",
                        "start": label, "start_step": step, "sft_seed": sft_seed, "start_test": start_test,
                        "seconds": time.perf_counter() - began})
    return out


def _environment(ctx: StudyContext, seed: int) -> GeneralPointsEnvironment:
    """ID hands from the study's deck, fresh every update (seeds disjoint from the eval sets)."""
    p = ctx.config.ppo
    deal = functools.partial(_study_deal, seed=seed, episodes=p.episodes_per_update, ranks=ctx.ranks)
    return GeneralPointsEnvironment(ctx.tokenizer, ctx.renderer, Rule.ID, p.episodes_per_update,
                                    seed=seed, mesh=ctx.mesh, deal=deal, **environment_settings(p))


def _study_deal(update: int, *, seed: int, episodes: int, ranks) -> list:
    return study_hands(Rule.ID, 20_000 + 1000 * seed + update, episodes, ranks)


def _train_one(ctx: StudyContext, run_label: str, start: str, step: int, seed: int, sft_seed: int = 0, *,
               config=None, wrap=None, reference=None, subdir: str = "ppo") -> dict:
    """One PPO run; ``config``/``wrap(env, seed)``/``reference`` (the KL reference's loader)
    change it into a control."""
    config = copy.deepcopy(ctx.config if config is None else config)
    config.seed = ctx.config.seed + 100 * seed
    rel_dir = f"{subdir}/{run_label}" if sft_seed == 0 else f"{subdir}/sft_seed{sft_seed}/{run_label}"
    run_dir = ctx.run_dir / rel_dir
    config.run_dir = str(run_dir)
    curve, hook = tracked_curve(ctx, run_dir / "curve.jsonl")

    env = _environment(ctx, seed)
    result = ppo_loop.train(config, ctx.model_cfg, lambda: ctx.sft_params(step, sft_seed),
                            env if wrap is None else wrap(env, config.seed),
                            mesh=ctx.mesh, resume=True, pad_id=pad_id(ctx.tokenizer),
                            eval_hook=hook, reference_policy=reference,
                            run_metadata=ctx.checkpoint_metadata(sft_step=step, sft_seed=sft_seed))
    policy = result.state.params["policy"]
    export_hf_checkpoint(ctx.model_cfg, policy, run_dir / "final_hf", source=ctx.base_dir)  # gathers per tensor
    final = ctx.evaluate_test(policy)
    return {"label": run_label, "start": start, "start_step": step, "seed": seed, "sft_seed": sft_seed,
            "curve": curve, "final": final, "run_dir": str(run_dir), "rel_dir": rel_dir,
            "policy_dir": str(run_dir / "final_hf"), "updates": result.updates,
            "detail": f"{result.updates} updates from SFT step {step}"
                      + (f" (SFT seed {sft_seed})" if sft_seed else "")}
