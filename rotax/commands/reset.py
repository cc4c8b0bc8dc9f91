"""`rotax reset --reference DIR --target DIR --op uv-merge|swap|sigma|layers ... --out DIR`:
apply one restoration operator (rotax.analysis.resets) and export an HF directory.

Examples: the study's "top 20% directions" is ``--op uv-merge --top 0.2``; "reset the first
25% of layers" is ``--op layers --layers "first 25%"`` (add ``--embeddings --head`` to also
reset embeddings and LM head, as the study's Llama run did). Layer specs use HF numbering.
"""

from __future__ import annotations

import json
from pathlib import Path


OPS = ("uv-merge", "swap", "sigma", "layers")


def register(subparsers) -> None:
    p = subparsers.add_parser("reset", help="restore directions/values/layers from a reference")
    p.add_argument("--reference", required=True, metavar="DIR", help="HF model directory")
    p.add_argument("--target", required=True, metavar="DIR", help="HF model directory to repair")
    p.add_argument("--op", required=True, choices=OPS)
    p.add_argument("--top", default=None, help="k_top: rank K or fraction F (e.g. 0.2 or 20%%)")
    p.add_argument("--tail", default="0", help="k_tail: rank K or fraction F (default 0)")
    p.add_argument("--layers", default=None, help="HF layers: '0-9', 'first 25%%', '3,5' "
                   "(default: all for uv-merge/swap/sigma; required for --op layers)")
    p.add_argument("--modules", default=None, help="module types, e.g. q,k,v,o,gate,up,down "
                   "(default: those seven)")
    p.add_argument("--embeddings", action="store_true", help="also restore embed_tokens")
    p.add_argument("--head", action="store_true", help="also restore lm_head (untied models)")
    p.add_argument("--dtype", default=None, help="load dtype (default: as stored)")
    p.add_argument("--out", required=True, metavar="DIR", help="output HF directory")
    p.set_defaults(run=run)


def run(args) -> int:
    import rotax
    from rotax.analysis import resets
    from rotax.analysis.selectors import Selector, parse_modules, parse_rank

    for directory in (args.reference, args.target):
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{directory}: no such model directory")
    if Path(args.out).resolve() in (Path(args.target).resolve(), Path(args.reference).resolve()):
        raise ValueError("--out must differ from --target and --reference")
    cfg, target = rotax.load_hf(args.target, dtype=args.dtype)
    ref_cfg, reference = rotax.load_hf(args.reference, dtype=args.dtype)
    if tuple(ref_cfg.layer_ids) != tuple(cfg.layer_ids):
        raise ValueError(f"reference layer_ids {ref_cfg.layer_ids} differ from target {cfg.layer_ids}")
    numbering = dict(layer_ids=cfg.layer_ids, num_hidden_layers=cfg.num_hidden_layers)
    settings = {"op": args.op, "reference": str(args.reference), "target": str(args.target)}
    if args.op == "layers":
        if args.layers is None:
            raise ValueError("--op layers needs --layers (e.g. 'first 25%')")
        if args.top is not None or args.modules is not None:
            raise ValueError("--top/--modules do not apply to --op layers (whole layers are reset)")
        params = resets.reset_layers(target, reference, args.layers, include_embeddings=args.embeddings,
                                     include_head=args.head, **numbering)
        settings.update(layers=args.layers, hf_layers=list(resets.selected_layers(
            target, args.layers, **numbering)), embeddings=args.embeddings, head=args.head)
    else:
        if args.top is None:
            raise ValueError(f"--op {args.op} needs --top K|F")
        modules = list(parse_modules(args.modules))
        modules += [m for m, flag in (("embed", args.embeddings), ("head", args.head))
                    if flag and m not in modules]
        selector = Selector(layers=args.layers, modules=tuple(modules))
        top, tail = parse_rank(args.top), parse_rank(args.tail)
        op = {"uv-merge": resets.uv_merge, "swap": resets.triplet_swap, "sigma": resets.sigma_only}[args.op]
        params = op(target, reference, selector, top, tail, **numbering)
        settings.update(top=top, tail=tail, modules=modules, layers=args.layers,
                        hf_layers=list(resets.selected_layers(target, args.layers, **numbering)))
    report = rotax.export_hf(cfg, params, args.out, source=args.target)
    (Path(args.out) / "rotax_reset.json").write_text(json.dumps(settings, indent=2))
    print(f"{args.op}: wrote {args.out} ({report.written} tensors"
          f"{f', {report.copied} copied from the target' if report.copied else ''}); "
          f"HF layers {settings.get('hf_layers')}")
    return 0
