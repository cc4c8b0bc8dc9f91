"""`rotax study`: the whole two-stage study with a report (default: the embedded toy)."""

from __future__ import annotations


def register(subparsers) -> None:
    from rotax.runtime.run_config import add_config_arguments

    p = subparsers.add_parser("study", help="run the whole study (base, SFT, PPO, analysis, resets, report)")
    add_config_arguments(p, default="toy")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="redo STAGE and every later stage from scratch; their old outputs are moved "
                        "to RUN_DIR/replaced/<time>/ (repeatable)")
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run only STAGE (earlier stages must have finished)")
    p.set_defaults(run=run)


def run(args) -> int:
    from rotax.runtime.run_config import apply_overrides, config_from_args
    from rotax.study.pipeline import apply_preset, run_study
    from rotax.study.recipe import check_recipe

    config = config_from_args(args)
    apply_preset(config)  # then the command line wins over the preset
    apply_overrides(config, args.config_overrides)
    check_recipe(config)
    outputs = run_study(config, force=tuple(args.force), only=tuple(args.only))
    report = outputs.get("report", {})
    if report:
        print(f"report: {report['report_html']}  ({report['report_md']})")
    return 0
