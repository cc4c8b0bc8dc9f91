"""`rotax export --checkpoint DIR --out DIR`: any train-state checkpoint as an HF directory."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a checkpoint's params as an HF model directory")
    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="a checkpoint directory, e.g. runs/<name>/checkpoints/sft/140")
    p.add_argument("--out", required=True, metavar="DIR", help="output HF directory")
    p.add_argument("--source", default=None, metavar="DIR",
                   help="the HF directory the run started from (default: from the run metadata)")
    p.set_defaults(run=run)


def load_checkpoint_params(checkpoint_dir, mesh=None):
    """``(ModelConfig, params, metadata)`` of a checkpoint: its model config comes from the
    checkpoint metadata (``model.hf_config`` and dtypes), only params are read."""
    import jax

    from rotax.io.checkpoint import read_metadata, restore_model_params
    from rotax.models.config import ModelConfig
    from rotax.models.decoder import sharded_param_shapes
    from rotax.runtime.sharding import make_mesh

    metadata = read_metadata(checkpoint_dir)
    model = metadata.get("model") or {}
    if not model.get("hf_config"):
        raise ValueError(f"{checkpoint_dir}: the checkpoint metadata has no model.hf_config")
    cfg = ModelConfig.from_hf_dict(model["hf_config"]).replace(
        param_dtype=model.get("param_dtype", "float32"), dtype=model.get("compute_dtype", "float32"))
    mesh = mesh or make_mesh(devices=jax.devices()[:1])
    return cfg, restore_model_params(checkpoint_dir, sharded_param_shapes(cfg, mesh)), metadata


def run(args) -> int:
    import logging
    from pathlib import Path

    import rotax

    cfg, params, metadata = load_checkpoint_params(args.checkpoint)
    source = args.source or (metadata.get("model") or {}).get("source")
    if source and not Path(source).is_dir():
        logging.getLogger(__name__).warning("source %s is gone; exporting without it "
                                            "(no tokenizer files copied)", source)
        source = None
    report = rotax.export_hf(cfg, params, args.out, source=source)
    print(f"exported step {metadata.get('step')} to {report.out_dir} ({len(report.files)} files)")
    return 0
