"""``attnlab data prepare NAME``: build (and cache) a corpus and print its statistics."""

from __future__ import annotations

import argparse

import yaml

from attnlab.config import ConfigError
from attnlab.data import CORPUS_NAMES, CorpusConfig, corpus_statistics, prepare_corpus


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``data prepare``."""
    data = subparsers.add_parser("data", help="prepare data sets")
    actions = data.add_subparsers(dest="action", metavar="ACTION", required=True)
    prepare = actions.add_parser("prepare", help="build and cache a corpus, print its statistics")
    prepare.add_argument("name", choices=CORPUS_NAMES)
    prepare.add_argument("--source-lang", default="en")
    prepare.add_argument("--target-lang", default="ja")
    prepare.add_argument("--size", type=int, default=20_000, help="generated: number of pairs")
    prepare.add_argument("--paths", nargs="+", default=(), help="user: one TSV, or source and target files")
    prepare.add_argument(
        "--sources", nargs="+", default=None, help="libreoffice-combined: sources added to the help pairs"
    )
    prepare.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Print the statistics as YAML."""
    config = _corpus_config(args)
    statistics = corpus_statistics(prepare_corpus(config))
    print(yaml.safe_dump(statistics, sort_keys=False, allow_unicode=True), end="")
    return 0


def _corpus_config(args: argparse.Namespace) -> CorpusConfig:
    """The corpus the options ask for; a bad value fails naming its option (``--size (0) must be >= 1``)."""
    options = {"source_lang": args.source_lang, "target_lang": args.target_lang, "size": args.size}
    if args.sources is not None:
        options["sources"] = tuple(args.sources)
    try:
        return CorpusConfig(name=args.name, paths=tuple(args.paths), **options)
    except ValueError as error:
        message = str(error)
        for field in (*options, "paths"):
            message = message.replace(f"{field} (", f"--{field.replace('_', '-')} (")
        if args.name == "user" and not args.paths:
            message = "corpus 'user' needs --paths: one TSV file, or a source and a target file"
        raise ConfigError(message) from error
