"""Command line of pocl-axolotl: ``pocl-axolotl quickstart`` and ``pocl-axolotl eval``.

Training itself always goes through the ``axolotl`` command; this entry point only
adds what Axolotl has no command for.
"""

from __future__ import annotations

import argparse
import logging
import sys

# Parent of every logger of this package; see pocl_axolotl.log.
PACKAGE_LOGGER = "axolotl.integrations.pocl_axolotl"


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
    show_info_logs()
    return int(args.run(args) or 0)


def show_info_logs() -> None:
    """Print this package's INFO records when nothing has set up Axolotl's logging."""
    package_logger = logging.getLogger(PACKAGE_LOGGER)
    if logging.getLogger("axolotl").handlers or package_logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)s] %(message)s"))
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    package_logger.propagate = False


if __name__ == "__main__":
    sys.exit(main())
