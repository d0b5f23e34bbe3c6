"""``attnlab``: one command, subcommands in the style of torchtune's ``tune`` and joeynmt's ``__main__``.

    attnlab train CONFIG.yaml [key=value ...] [--fresh]
    attnlab evaluate RUN_DIR [--split test]
    attnlab translate RUN_DIR [--text "..."] [--beam N]
    attnlab classify RUN_DIR IMAGE... [--top-k K] [--no-resize]
    attnlab data prepare NAME [--target-lang ja]
    attnlab average RUN_DIR [--last N]
    attnlab visualize RUN_DIR --text "..." | --image PATH | --pretrained minilm --text "..."
    attnlab serve RUN_DIR... [--pretrained minilm] [--port 8000]
    attnlab tour [--out runs/demo]
    attnlab experiment NAME | --all | --list [--out docs/site/figures] [--quick]
    attnlab bench [--quick] [--only NAME ...] [--device cpu|cuda] [--readme]
    attnlab demo

Every subcommand module exposes ``add_parser(subparsers)`` (which sets ``func``) and a
``run(args) -> int``. Errors a user can fix print one line and exit 2; a failed run exits 1.
``--debug`` (before or after the subcommand) shows the traceback instead, chained causes included,
and trains with attention NaN checks; options may sit between ``key=value`` overrides. Training
stopped by SIGINT (Ctrl-C) or SIGTERM saves ``last`` and exits 130 or 143.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from attnlab.cli import average as average_cmd
from attnlab.cli import bench as bench_cmd
from attnlab.cli import data as data_cmd
from attnlab.cli import experiment as experiment_cmd
from attnlab.cli import inference as inference_cmd
from attnlab.cli import serve as serve_cmd
from attnlab.cli import tour as tour_cmd
from attnlab.cli import train as train_cmd
from attnlab.cli import visualize as visualize_cmd
from attnlab.training.errors import TrainingInterrupted

__all__ = ["build_parser", "main"]

USAGE_ERRORS = 2
RUN_ERRORS = 1


def _subcommand_modules() -> list:
    modules = [
        train_cmd,
        inference_cmd,
        average_cmd,
        visualize_cmd,
        serve_cmd,
        tour_cmd,
        data_cmd,
        experiment_cmd,
        bench_cmd,
    ]
    try:
        from attnlab.cli import demo  # the lead's module
    except ImportError as error:  # keep the other subcommands usable without it
        logging.getLogger(__name__).debug("attnlab demo unavailable: %s", error)
    else:
        modules.append(demo)
    return modules


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other error of ``attnlab``;
    subcommand parsers are of this class too (``add_subparsers`` builds them with ``type(self)``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERRORS, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = _Parser(prog="attnlab", description="Attention mechanisms: train, evaluate, translate, classify.")
    _add_global_options(parser, default=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _subcommand_modules():
        module.add_parser(subparsers)
    for subparser in subparsers.choices.values():
        _add_global_options(subparser, default=argparse.SUPPRESS)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, default: object) -> None:
    """``-v`` and ``--debug``; a subcommand's copies default to SUPPRESS so that they do not undo
    the same option given before the subcommand."""
    parser.add_argument("-v", "--verbose", action="store_true", default=default, help="log progress details (INFO)")
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show tracebacks instead of one-line errors; train with attention NaN checks",
    )


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides after an option (``train CFG --fresh a=1``) join the others."""
    args, extras = parser.parse_known_args(argv)
    if extras and isinstance(getattr(args, "overrides", None), list) and not any(e.startswith("-") for e in extras):
        args.overrides.extend(extras)
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return args


def _user_errors() -> tuple[type[BaseException], ...]:
    from attnlab.data.image_files import ImageInputError
    from attnlab.data.user_corpus import UserCorpusError
    from attnlab.training import CheckpointError, ConfigError

    return (
        ConfigError,
        CheckpointError,
        ImageInputError,
        UserCorpusError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``attnlab`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = _parse(build_parser(), argv)
    # The process's own command line, for a command that must start itself again (train's allocator);
    # None when called with an argv, as tests and other Python code do.
    args.process_argv = list(sys.argv[1:]) if argv is None else None
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="attnlab: %(levelname)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as interrupted:
        print(f"attnlab {args.command}: {interrupted}", file=sys.stderr)
        return interrupted.exit_code
    except KeyboardInterrupt:
        print("attnlab: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        usage = isinstance(error, _user_errors())
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        hint = "" if usage else " (rerun with --debug for the traceback)"
        print(f"attnlab {args.command}: error: {first_line}{hint}", file=sys.stderr)
        return USAGE_ERRORS if usage else RUN_ERRORS


if __name__ == "__main__":
    sys.exit(main())
