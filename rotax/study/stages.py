"""The stages of `rotax study`. Each ``stage_<name>(context, outputs) -> dict`` reads the
outputs of earlier stages (JSON dicts) and returns its own."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import jax

from rotax.io import base_model
from rotax.tasks.points import toy
from rotax.io.checkpoint import CheckpointStore, restore_params
from rotax.models.decoder import param_shapes
from rotax.io.hf import export_hf_checkpoint
from rotax.sft.loop import host_params, mesh_from_config, train as train_sft
from rotax.runtime.sharding import param_shardings
from rotax.study.curve import tracked_curve
from rotax.tasks.points.accuracy import evaluate_accuracy, study_hands
from rotax.tasks.points import STANDARD_RANKS, Rule


#: Hand-set seeds: curves use 1000 + seed, the final test sets 1000 + 100 + seed (disjoint).
TEST_SEED_OFFSET = 100


class StudyContext:
    """Config, run directory, mesh, tokenizer and renderer shared by the stages."""

    def __init__(self, config, run_dir: Path):
        self.config, self.run_dir = config, Path(run_dir)
        self.mesh = mesh_from_config(config)
        self.ranks = toy.TOY_RANKS if config.study.deck == "toy" else STANDARD_RANKS
        self._tokenizer = None

    @property
    def base_dir(self) -> Path:
        return self.run_dir / "base"

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from rotax.io.tokenizer import load_tokenizer
            self._tokenizer = load_tokenizer(self.base_dir)
        return self._tokenizer

    @functools.cached_property
    def renderer(self):
        from rotax.sft.data import make_renderer
        return make_renderer(self.config.data)

    @functools.cached_property
    def model_cfg(self):
        return base_model.model_config(self.config.model, self.base_dir)

    def abstract_params(self):
        shapes = param_shapes(self.model_cfg)
        shardings = param_shardings(shapes, self.mesh)
        return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)

    def base_params(self):
        cfg, params, _ = base_model.load_base(_with_path(self.config.model, self.base_dir), self.mesh, self.run_dir)
        return params

    def sft_params(self, step: int):
        return restore_params(CheckpointStore(self.run_dir / "sft", "sft").path(step), self.abstract_params())

    def load_ppo_params(self, run: dict):
        _, params, _ = base_model.load_base(_with_path(self.config.model, run["policy_dir"]), self.mesh,
                                            self.run_dir)
        return params

    def evaluate(self, params, rule, *, n: int, seeds, seed_offset: int = 0) -> dict:
        """Accuracy pooled over ``seeds`` (each a fresh seeded hand set of ``n`` hands)."""
        s = self.config.study
        hands = [h for seed in seeds for h in study_hands(rule, 1000 + seed_offset + seed, n, self.ranks)]
        return evaluate_accuracy(self.model_cfg, params, self.tokenizer, self.renderer, hands, rule,
                                 attempts=s.attempts, max_new_tokens=s.max_new_tokens,
                                 batch_size=s.eval_batch_size, seed=seed_offset)

    def evaluate_id_ood(self, params, *, n: int, seeds, seed_offset: int = 0) -> dict:
        return {"id": self.evaluate(params, Rule.ID, n=n, seeds=seeds, seed_offset=seed_offset),
                "ood": self.evaluate(params, Rule.OOD, n=n, seeds=seeds, seed_offset=seed_offset)}

    def evaluate_test(self, params) -> dict:
        """ID/OOD on the final test sets (``reset_hands`` × ``eval_seeds``), whose hands are
        disjoint from the curve hands the peak-OOD checkpoint was picked on (no winner's curse)
        and from the auto-select probe hands."""
        s = self.config.study
        return self.evaluate_id_ood(params, n=s.reset_hands, seeds=s.eval_seeds, seed_offset=TEST_SEED_OFFSET)


def _with_path(model_section, path):
    section = copy.deepcopy(model_section)
    section.path = str(path)
    return section


def _stage_config(config, section_name: str, run_dir: Path):
    """A copy of ``config`` whose ``sft`` section is ``config.<section_name>`` and whose run
    directory is ``run_dir`` (the trainer is shared by pre-training and SFT)."""
    out = copy.deepcopy(config)
    out.sft = copy.deepcopy(config[section_name])
    out.run_dir = str(run_dir)
    return out


# ---------------------------------------------------------------- base


def stage_base(ctx: StudyContext, outputs: dict) -> dict:
    config = ctx.config
    if config.model.path != "toy":
        source = base_model.resolve_path(config.model, ctx.run_dir)
        if not ctx.base_dir.exists():
            ctx.base_dir.symlink_to(Path(source).resolve())
        return {"base_dir": str(ctx.base_dir), "pretrained": False,
                "eval": ctx.evaluate_id_ood(ctx.base_params(), n=config.study.eval_hands, seeds=(0,))}
    from rotax.io.tokenizer import build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    init_dir = toy.write_toy_base(ctx.run_dir / "base_init", tokenizer, jax.random.key(config.seed))
    init_cfg = base_model.model_config(config.model, init_dir)
    pre = _stage_config(config, "pretrain", ctx.run_dir / "pretrain")
    source = toy.pretraining_source(tokenizer, ctx.renderer, batch_size=pre.sft.batch_size,
                                    bucket=config.data.bucket, max_length=config.data.max_length,
                                    solution_choice=config.data.solution_choice)
    _, init_params, _ = base_model.load_base(_with_path(config.model, init_dir), ctx.mesh, ctx.run_dir)
    result = train_sft(pre, init_cfg, init_params, source, mesh=ctx.mesh, resume=True,
                       run_metadata={"source": str(init_dir)})
    export_hf_checkpoint(init_cfg, host_params(result.state), ctx.base_dir, source=init_dir)
    return {"base_dir": str(ctx.base_dir), "pretrained": True, "pretrain_steps": result.step,
            "final_loss": result.metrics.get("loss"),
            "eval": ctx.evaluate_id_ood(ctx.base_params(), n=config.study.eval_hands, seeds=(0,))}


# ---------------------------------------------------------------- sft


def stage_sft(ctx: StudyContext, outputs: dict) -> dict:
    config, s = ctx.config, ctx.config.study
    pool_hands = study_hands(Rule.ID, 7, s.sft_pool_hands, ctx.ranks)
    source = toy.hand_pool_source([(h, Rule.ID) for h in pool_hands], ctx.tokenizer, ctx.renderer,
                                  batch_size=config.sft.batch_size, bucket=config.data.bucket,
                                  max_length=config.data.max_length,
                                  solution_choice=config.data.solution_choice)
    curve, hook = tracked_curve(ctx, ctx.run_dir / "sft" / "curve.jsonl")  # survives a resume

    sft_config = _stage_config(config, "sft", ctx.run_dir / "sft")
    result = train_sft(sft_config, ctx.model_cfg, ctx.base_params(), source, mesh=ctx.mesh, resume=True,
                       eval_hook=hook, run_metadata={"source": str(ctx.base_dir)})
    steps = sorted(result.checkpoints)
    evaluated = [c["step"] for c in curve if c["step"] in steps]
    peak = max(curve, key=lambda c: (c["ood"]["mean"], -c["step"]))["step"] if curve else steps[-1]
    end = steps[-1]
    later = [st for st in evaluated if peak < st < end]
    mid = later[len(later) // 2] if later else end
    return {"checkpoints": steps, "curve": curve, "peak_step": peak, "mid_step": mid, "end_step": end,
            "pool_hands": len(pool_hands)}


# ---------------------------------------------------------------- ppo


def stage_ppo(ctx: StudyContext, outputs: dict) -> dict:
    from rotax.study.stage_ppo import run_ppo_stage

    return run_ppo_stage(ctx, outputs)


# ---------------------------------------------------------------- analysis


def stage_analysis(ctx: StudyContext, outputs: dict) -> dict:
    """Every SFT checkpoint (and PPO end points) against the base and the peak-OOD checkpoint,
    each metric beside its matched-norm null."""
    from rotax.analysis import spectral
    from rotax.analysis import plots as spectral_plots
    from rotax.analysis.subspace import rank_setting

    s, sft = ctx.config.study, outputs["sft"]
    out_dir = ctx.run_dir / "analysis"
    out_dir.mkdir(parents=True, exist_ok=True)
    targets = {f"sft_{step}": ctx.sft_params(step) for step in sft["checkpoints"] if step > 0}
    for run in outputs.get("ppo", {}).get("runs", []):
        targets[run["label"]] = ctx.load_ppo_params(run)
    references = {"base": ctx.base_params(), "peak": ctx.sft_params(sft["peak_step"])}
    files, summaries = [], {}
    for ref_name, reference in references.items():
        chosen = {k: v for k, v in targets.items() if k != f"sft_{sft['peak_step']}" or ref_name != "peak"}
        result = spectral.analyze(reference, chosen, k=rank_setting(s.analysis_k), null_seeds=s.null_seeds,
                                  key=jax.random.key(ctx.config.seed), layer_ids=ctx.model_cfg.layer_ids,
                                  progress=s.progress)
        sub = out_dir / f"vs_{ref_name}"
        sub.mkdir(exist_ok=True)
        result.write_csv(sub / "metrics.csv")
        result.save_npz(sub / "arrays.npz")
        files += [str(p) for p in spectral_plots.plot_all(result, sub)]
        summaries[ref_name] = spectral.summarize(result.rows)
    return {"figures": files, "summary": summaries, "targets": sorted(targets)}


# ---------------------------------------------------------------- resets


def stage_resets(ctx: StudyContext, outputs: dict) -> dict:
    from rotax.study.stage_resets import run_reset_grid

    return run_reset_grid(ctx, outputs)


def stage_autoselect(ctx: StudyContext, outputs: dict) -> dict:
    from rotax.study.stage_resets import run_autoselect

    return run_autoselect(ctx, outputs)


def stage_report(ctx: StudyContext, outputs: dict) -> dict:
    from rotax.study.report import write_report
    from rotax.study.summary import build_summary

    summary = build_summary(ctx, outputs)
    md, page = write_report(summary, ctx.run_dir)
    return {"report_md": str(md), "report_html": str(page)}
