"""`rotax analyze --reference DIR --target DIR [--target DIR ...] --out OUT`: spectral
comparison of every weight matrix, streamed from disk one module stack at a time.

Writes OUT/metrics.csv (one row per target × tensor × HF layer, metrics and matched-norm null
side by side), OUT/summary.csv, OUT/arrays.npz (per-index spectra and angles), OUT/*.png and
OUT/config.json (the resolved settings), and prints a per-module summary.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def register(subparsers) -> None:
    p = subparsers.add_parser("analyze", help="spectral analysis of targets against a reference")
    p.add_argument("--reference", required=True, metavar="DIR", help="HF model directory")
    p.add_argument("--target", required=True, action="append", metavar="DIR",
                   help="HF model directory (repeat for several targets)")
    p.add_argument("--out", required=True, metavar="OUT", help="output directory")
    p.add_argument("--k", default="0.2", help="top-subspace rank K or fraction F of min(m, n) "
                   "(default 0.2; above 1/2 angles are forced to 0)")
    p.add_argument("--bands", default="0.2,0.2", help="head,tail fractions of the spectrum")
    p.add_argument("--modules", default="all", help="module types (default all: q,k,v,o,gate,"
                   "up,down,embed,head)")
    p.add_argument("--null-seeds", type=int, default=2, help="matched-norm null draws (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the null control's jax.random key")
    p.add_argument("--float64", action="store_true", help="analyse in float64 (slower)")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(run=run)


def _labels(dirs: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for directory in dirs:
        label = Path(directory).resolve().name or "target"
        while label in out:
            label += "'"
        out[label] = Path(directory)
    return out


def run(args) -> int:
    import jax

    from rotax.analysis import spectral
    from rotax.analysis.checkpoint_pairs import checkpoint_pairs
    from rotax.analysis.selectors import parse_modules, parse_rank

    reference = Path(args.reference)
    targets = _labels(args.target)
    for directory in [reference, *targets.values()]:
        if not directory.is_dir():
            raise FileNotFoundError(f"{directory}: no such model directory")
    modules = parse_modules(args.modules)
    bands = tuple(float(x) for x in args.bands.split(","))
    if len(bands) != 2 or sum(bands) > 1:
        raise ValueError(f"--bands {args.bands!r}: give head,tail fractions summing to at most 1")
    k = parse_rank(args.k)
    cfg, stream = checkpoint_pairs(reference, targets, modules)
    result = spectral.analyze(stream, k=k, bands=bands, null_seeds=args.null_seeds,
                              key=jax.random.key(args.seed), layer_ids=cfg.layer_ids,
                              dtype="float64" if args.float64 else "float32", progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result.write_csv(out / "metrics.csv")
    result.save_npz(out / "arrays.npz")
    summary = spectral.summarize(result.rows)
    _write_rows(out / "summary.csv", summary)
    settings = {"reference": str(reference), "targets": {k_: str(v) for k_, v in targets.items()},
                "k": k, "bands": list(bands), "modules": list(modules), "null_seeds": args.null_seeds,
                "seed": args.seed, "dtype": "float64" if args.float64 else "float32",
                "layer_ids": list(cfg.layer_ids), "matrices": len(result.rows)}
    (out / "config.json").write_text(json.dumps(settings, indent=2))
    if not args.no_plots:
        from rotax.analysis import plots as spectral_plots

        spectral_plots.plot_all(result, out)
    print(format_summary(summary))
    print(f"wrote {out / 'metrics.csv'} ({len(result.rows)} rows), summary.csv, arrays.npz"
          + ("" if args.no_plots else ", *.png"))
    return 0


def _write_rows(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(c for r in rows for c in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def format_summary(summary: list[dict]) -> str:
    """A fixed-width table: per target and module, each metric beside its null."""
    header = (f"{'target':<16} {'module':<6} {'n':>4}  {'Σ drift':>9} {'(null)':>9}  "
              f"{'chordal U':>9} {'(null)':>9}  {'rotation':>9} {'(null)':>9}")
    lines = [header, "-" * len(header)]
    for s in summary:
        def cell(name):
            value = s.get(name)
            return f"{value:9.4f}" if value is not None and np.isfinite(value) else f"{'-':>9}"

        lines.append(f"{s['target'][:16]:<16} {s['module']:<6} {s['matrices']:>4}  "
                     f"{cell('sigma_drift')} {cell('null_sigma_drift')}  "
                     f"{cell('chordal_norm_u')} {cell('null_chordal_norm_u')}  "
                     f"{cell('rotation_share')} {cell('null_rotation_share')}")
    return "\n".join(lines)
