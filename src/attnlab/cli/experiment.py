"""``attnlab experiment``: run the site's experiments, each a seeded command with figures and numbers.

    attnlab experiment NAME [--out DIR] [--quick]   # writes DIR/NAME/*.png and DIR/NAME/results.json
    attnlab experiment --all [--out DIR]            # every experiment (``make figures``)
    attnlab experiment --list                       # names, figures and runtimes

``DIR`` defaults to ``docs/site/figures``; when it is the figures folder of a site (its parent holds
``*.md`` pages), the generated number blocks of those pages are rewritten from the new results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_parser", "run"]

DEFAULT_OUT = Path("docs/site/figures")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``experiment`` on the ``attnlab`` command."""
    parser = subparsers.add_parser("experiment", help="run the documentation's experiments (figures and numbers)")
    parser.add_argument("name", nargs="?", help="the experiment to run (see --list)")
    parser.add_argument("--all", action="store_true", help="run every experiment")
    parser.add_argument("--list", action="store_true", help="list the experiments and exit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"figures root (default {DEFAULT_OUT})")
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (the tests' size)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run the experiments asked for; print what each wrote."""
    from attnlab import experiments
    from attnlab.experiments import pages

    if args.list:
        for name, module in experiments.experiments().items():
            print(f"{name:<16} {getattr(module, 'RUNTIME', '?'):<12} {', '.join(module.FIGURES)}")
        return 0
    if args.all == (args.name is not None):
        print("attnlab experiment: error: give one NAME or --all (see --list)", file=sys.stderr)
        return 2
    try:
        chosen = experiments.names() if args.all else [experiments.get(args.name).NAME]
    except experiments.UnknownExperimentError as error:
        print(f"attnlab experiment: error: {error}", file=sys.stderr)
        return 2
    for name in chosen:
        start = time.perf_counter()
        print(f"$ attnlab experiment {name} --out {args.out}{' --quick' if args.quick else ''}", flush=True)
        experiments.run_experiment(name, args.out / name, quick=args.quick)
        print(f"  wrote {args.out / name} in {time.perf_counter() - start:.0f} s", flush=True)
    site = args.out.parent
    if not args.quick and any(site.glob("*.md")):
        for page in pages.update_pages(site, args.out):
            print(f"  updated the numbers of {page}")
    return 0
