"""The `rotax` console script: one subcommand per module in ``rotax.commands``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Listed explicitly (not discovered) so `rotax --help` is fast and a broken optional module
# does not hide the others.
COMMANDS = ("study", "gate", "sft", "ppo", "eval", "analyze", "reset", "export", "inspect",
            "import_gguf")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rotax", description=__doc__.split(":")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rotax.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"rotax.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from rotax.runtime.distributed import maybe_initialize

    maybe_initialize()  # multi-host (TPU pod, SLURM, ROTAX_* env): join before any device use
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        # Bad input: say what was wrong, no traceback.
        print(f"rotax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
