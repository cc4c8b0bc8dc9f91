"""`rotax sft --config FILE [--config.key=value ...] [--resume]`: supervised fine-tuning."""

from __future__ import annotations

from pathlib import Path

from rotax.runtime.run_config import add_config_arguments


def register(subparsers) -> None:
    p = subparsers.add_parser("sft", help="supervised fine-tuning from an HF directory (model.path)")
    add_config_arguments(p)
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest good checkpoint in run_dir")
    p.set_defaults(run=run)


def run(args) -> int:
    import jax

    from rotax.io import base_model
    from rotax.sft import loop as sft_loop
    from rotax.runtime.run_config import config_from_args
    from rotax.io.tokenizer import load_tokenizer
    from rotax.tasks.points.evaluation import training_eval_hook
    from rotax.tasks.points.sft_source import make_renderer, make_source, probe_sets

    config = config_from_args(args)
    mesh = sft_loop.mesh_from_config(config)
    source_dir = base_model.resolve_path(config.model, config.run_dir).absolute()
    model_cfg = base_model.model_config(config.model, source_dir)
    tokenizer = load_tokenizer(source_dir)
    rows = config.sft.batch_size // config.sft.grad_accum_steps
    data_source = make_source(config.data, tokenizer, batch_size=config.sft.batch_size)
    hook = None
    if config.sft.eval_every and config.data.source == "general_points":
        hook = training_eval_hook(config.sft, model_cfg, tokenizer, make_renderer(config.data), mesh)

    def load_params():
        return base_model.load_base(config.model, mesh, config.run_dir)[1]

    metadata = {"model": base_model.checkpoint_model_metadata(model_cfg, source_dir)}
    result = sft_loop.train(config, model_cfg, load_params, data_source, mesh=mesh,
                            resume=args.resume, eval_hook=hook,
                            probe_sets=probe_sets(config.data, tokenizer, rows), run_metadata=metadata)
    if jax.process_index() == 0:
        print(f"sft: {result.step} steps, loss {result.metrics.get('loss', float('nan')):.4f}; "
              f"checkpoints {result.checkpoints} in {Path(config.run_dir) / 'checkpoints' / 'sft'}")
        if result.max_ood:
            print(f"sft_max_ood: step {result.max_ood['step']} "
                  f"({result.max_ood['metric']} = {result.max_ood['value']:.4f})")
    return 0
