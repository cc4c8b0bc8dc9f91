"""The base stage of `rotax study`: the model every later stage starts from."""

from __future__ import annotations

from pathlib import Path

import jax

from rotax.io import base_model
from rotax.io.hf import export_hf_checkpoint
from rotax.sft.loop import train as train_sft
from rotax.study.context import StudyContext, with_path
from rotax.tasks.points import toy
from rotax.tasks.points.toy_tokenizer import build_toy_tokenizer
from rotax.training.train_state import host_params


def run(ctx: StudyContext, outputs: dict) -> dict:
    """A real model: the base directory links to it. The toy: a random init pre-trained on the
    base's rule mix (``pretrain`` section), exported as the base HF directory."""
    config = ctx.config
    if config.model.path != "toy":
        source = base_model.resolve_path(config.model, ctx.run_dir)
        if not ctx.base_dir.exists():
            ctx.base_dir.symlink_to(Path(source).resolve())
        return {"base_dir": str(ctx.base_dir), "pretrained": False,
                "eval": ctx.evaluate_id_ood(ctx.base_params(), n=config.study.eval_hands, seeds=(0,))}
    tokenizer = build_toy_tokenizer()
    init_dir = toy.write_toy_base(ctx.run_dir / "base_init", tokenizer, jax.random.key(config.seed))
    init_cfg = base_model.model_config(config.model, init_dir)
    source = toy.pretraining_source(tokenizer, ctx.renderer, batch_size=config.pretrain.batch_size,
                                    bucket=config.data.bucket, max_length=config.data.max_length,
                                    solution_choice=config.data.solution_choice)
    _, init_params, _ = base_model.load_base(with_path(config.model, init_dir), ctx.mesh, ctx.run_dir)
    result = train_sft(config, init_cfg, init_params, source, mesh=ctx.mesh, resume=True,
                       section="pretrain", run_dir=ctx.run_dir / "pretrain",
                       run_metadata={"source": str(init_dir)})
    export_hf_checkpoint(init_cfg, host_params(result.state), ctx.base_dir, source=init_dir)
    return {"base_dir": str(ctx.base_dir), "pretrained": True, "pretrain_steps": result.step,
            "final_loss": result.metrics.get("loss"),
            "eval": ctx.evaluate_id_ood(ctx.base_params(), n=config.study.eval_hands, seeds=(0,))}
