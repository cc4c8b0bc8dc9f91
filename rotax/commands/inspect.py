"""`rotax inspect DIR`: the parameter tree of an HF directory (path, shape, dtype, sharding, bytes)."""

from __future__ import annotations

import math

import jax


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="print the parameter tree of an HF checkpoint directory")
    p.add_argument("path", metavar="DIR", help="HF model directory (config.json + safetensors)")
    p.add_argument("--mesh", default=None, help="mesh shape data,fsdp,tensor (default: all fsdp)")
    p.add_argument("--dtype", default=None, help="parameter dtype (default: as stored)")
    p.set_defaults(run=run)


def parameter_table(params) -> list[tuple[str, tuple, str, str, int]]:
    """Rows ``(path, shape, dtype, sharding, bytes)`` for every leaf of a canonical tree."""
    from rotax.runtime.sharding import describe
    from rotax.runtime.tree_paths import path_keys

    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = "/".join(path_keys(path))
        rows.append((name, tuple(leaf.shape), str(leaf.dtype), describe(leaf.sharding),
                     int(leaf.size * leaf.dtype.itemsize)))
    return rows


def run(args) -> int:
    import rotax
    from rotax.runtime.sharding import make_mesh

    shape = tuple(int(x) for x in args.mesh.split(",")) if args.mesh else None
    cfg, params = rotax.load_hf(args.path, mesh=make_mesh(shape), dtype=args.dtype)
    rows = parameter_table(params)
    width = max(len(r[0]) for r in rows)
    print(f"{cfg.architecture}: {cfg.num_layers} stacked layers (HF layers {list(cfg.layer_ids)}), "
          f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size}")
    print(f"{'path':<{width}}  {'shape':<22} {'dtype':<9} {'sharding':<28} bytes")
    for name, shp, dtype, shard, nbytes in rows:
        print(f"{name:<{width}}  {str(shp):<22} {dtype:<9} {shard:<28} {nbytes:,}")
    total = sum(r[4] for r in rows)
    count = sum(math.prod(r[1]) for r in rows)
    print(f"total: {count:,} parameters, {total:,} bytes")
    return 0
