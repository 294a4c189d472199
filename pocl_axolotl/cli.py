"""Command line of pocl-axolotl: ``pocl-axolotl quickstart`` and ``pocl-axolotl eval``.

Training itself always goes through the ``axolotl`` command; this entry point only
adds what Axolotl has no command for.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="pocl-axolotl",
        description="Curriculum knowledge distillation for Axolotl (POCL).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    from pocl_axolotl import quickstart

    quickstart.add_arguments(
        commands.add_parser(
            "quickstart",
            help="Build small local models and run preprocess, SFT and KD on CPU.",
            description=quickstart.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )

    from pocl_axolotl import evaluation

    evaluation.add_arguments(
        commands.add_parser(
            "eval",
            help="Generate responses and report ROUGE-L on JSON Lines files.",
            description=evaluation.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command named on the command line and return its exit status."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
