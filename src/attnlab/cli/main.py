"""``attnlab``: one command, subcommands in the style of torchtune's ``tune`` and joeynmt's ``__main__``.

    attnlab train CONFIG.yaml [key=value ...] [--fresh]
    attnlab evaluate RUN_DIR [--split test]
    attnlab translate RUN_DIR [--text "..."] [--beam N]
    attnlab classify RUN_DIR IMAGE... [--top-k K] [--no-resize]
    attnlab data prepare NAME [--target-lang ja]
    attnlab demo

Every subcommand module exposes ``add_parser(subparsers)`` (which sets ``func``) and a
``run(args) -> int``. Errors a user can fix print one line and exit 2; a failed run exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from attnlab.cli import data as data_cmd
from attnlab.cli import inference as inference_cmd
from attnlab.cli import train as train_cmd

__all__ = ["build_parser", "main"]

USAGE_ERRORS = 2
RUN_ERRORS = 1


def _subcommand_modules() -> list:
    modules = [train_cmd, inference_cmd, data_cmd]
    try:
        from attnlab.cli import demo  # the lead's module
    except ImportError as error:  # keep the other subcommands usable without it
        logging.getLogger(__name__).debug("attnlab demo unavailable: %s", error)
    else:
        modules.append(demo)
    return modules


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="attnlab", description="Attention mechanisms: train, evaluate, translate, classify."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from attnlab.data.image_files import ImageInputError
    from attnlab.training import CheckpointError, ConfigError

    return (ConfigError, CheckpointError, ImageInputError, FileNotFoundError, NotADirectoryError, IsADirectoryError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attnlab`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="attnlab: %(levelname)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        code = USAGE_ERRORS if isinstance(error, _user_errors()) else RUN_ERRORS
        print(f"attnlab {args.command}: error: {error}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
