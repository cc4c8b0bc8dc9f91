"""`rotax ppo --config FILE --init DIR [--resume] [--config.ppo.key=value ...]`: PPO on
GeneralPoints revision episodes from an SFT checkpoint (``runs/<name>/checkpoints/sft/<step>``)
or an HF model directory."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    from rotax.runtime.run_config import add_config_arguments

    p = subparsers.add_parser("ppo", help="PPO (actor-critic, GAE) on GeneralPoints episodes")
    add_config_arguments(p)
    p.add_argument("--init", default=None, metavar="DIR",
                   help="starting policy: an SFT or PPO checkpoint directory (checkpoints/sft/<step>) "
                        "or an HF model directory (default: the config's model.path)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest good PPO checkpoint in run_dir")
    p.set_defaults(run=run)


def resolve_init(init, config) -> tuple[Path, Path | None]:
    """``(source HF directory, SFT checkpoint directory or None)`` of ``--init``.

    An SFT checkpoint names its source HF directory (model config + tokenizer) in its
    metadata (``model.source``); an HF directory is its own source."""
    from rotax.io import base_model
    from rotax.io.checkpoint import read_metadata

    if init is None:
        return base_model.resolve_path(config.model, config.run_dir).absolute(), None
    path = Path(init).absolute()
    if not path.is_dir():
        raise FileNotFoundError(f"--init {init}: no such directory")
    if (path / "config.json").is_file():
        return path, None
    if (path / "metadata").is_dir():
        metadata = read_metadata(path)
        source = (metadata.get("model") or {}).get("source")
        if not source or not (Path(source) / "config.json").is_file():
            raise FileNotFoundError(f"--init {init}: its metadata names no HF source directory "
                                    f"(model.source = {source!r})")
        return Path(source), path
    raise ValueError(f"--init {init}: neither an HF directory (config.json) nor a rotax "
                     f"checkpoint (metadata/)")


def make_environment(config, tokenizer, mesh):
    """The :class:`rotax.tasks.points.environment.GeneralPointsEnvironment` the ``ppo`` and
    ``data`` sections describe (renderer from ``data.renderer``, hands under ``ppo.rule``)."""
    from rotax.tasks.points.environment import GeneralPointsEnvironment, environment_settings
    from rotax.tasks.points.sft_source import make_renderer, parse_rule

    p = config.ppo
    return GeneralPointsEnvironment(tokenizer, make_renderer(config.data), parse_rule(p.rule),
                                    p.episodes_per_update, seed=config.seed, mesh=mesh,
                                    **environment_settings(p))


def run(args) -> int:
    import jax

    from rotax.io import base_model
    from rotax.rl.ppo import loop as ppo_loop
    from rotax.io.checkpoint import restore_model_params
    from rotax.models.decoder import sharded_param_shapes
    from rotax.io.hf import export_hf_checkpoint, load_hf_checkpoint
    from rotax.runtime.run_config import config_from_args
    from rotax.io.tokenizer import load_tokenizer, pad_id

    config = config_from_args(args)
    for section in ("ppo", "model", "data"):
        if section not in config:
            raise ValueError(f"config {args.config} has no {section!r} section")
    mesh = ppo_loop.mesh_from_config(config)
    source, checkpoint = resolve_init(args.init, config)
    model_cfg = base_model.model_config(config.model, source)
    tokenizer = load_tokenizer(source)

    def load_policy():
        if checkpoint is None:
            return load_hf_checkpoint(source, mesh=mesh, dtype=model_cfg.param_dtype,
                                      compute_dtype=model_cfg.dtype, remat=model_cfg.remat)[1]
        return restore_model_params(checkpoint, sharded_param_shapes(model_cfg, mesh))

    hook = None
    if config.ppo.eval_every:
        from rotax.tasks.points.evaluation import training_eval_hook
        from rotax.tasks.points.sft_source import make_renderer

        hook = training_eval_hook(config.ppo, model_cfg, tokenizer, make_renderer(config.data), mesh)
    metadata = {"init": str(checkpoint or source),
                "model": base_model.checkpoint_model_metadata(model_cfg, source)}
    result = ppo_loop.train(config, model_cfg, load_policy, make_environment(config, tokenizer, mesh),
                            mesh=mesh, resume=args.resume, pad_id=pad_id(tokenizer, model_cfg),
                            eval_hook=hook, run_metadata=metadata)
    out_dir = None
    if config.ppo.export_hf:
        out_dir = Path(config.run_dir) / "hf" / config.ppo.stage
        # device arrays: export gathers one tensor at a time (on every process when multi-host)
        export_hf_checkpoint(model_cfg, result.state.params["policy"], out_dir, source=source)
        if jax.process_index() == 0:
            tokenizer.save_pretrained(out_dir)
    if jax.process_index() == 0:
        m = result.metrics
        summary = (f"ppo: {result.updates} updates; last reward {m.get('reward_mean', float('nan')):.3f}, "
                   f"success {m.get('success_rate', float('nan')):.3f}; checkpoints {result.checkpoints} "
                   f"in {Path(config.run_dir) / 'checkpoints' / config.ppo.stage}")
        print(summary + (f"; policy exported to {out_dir}" if out_dir else ""))
    return 0
