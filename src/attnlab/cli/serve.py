"""``attnlab serve RUN_DIR... [--pretrained minilm] [--host 127.0.0.1] [--port 8000]``: the attention
viewer in the browser (``attnlab.web``). Every model is loaded before the server binds: a run that
fails to load prints one line and exits 2."""

from __future__ import annotations

import argparse
import sys

from attnlab.training import CheckpointError, ConfigError
from attnlab.web.encoder import PRETRAINED

USAGE_ERRORS = 2


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``serve``."""
    serve = subparsers.add_parser("serve", help="the attention viewer in the browser, over trained runs")
    serve.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="translation or classification runs")
    serve.add_argument(
        "--pretrained", action="append", choices=PRETRAINED, default=[], help="also serve a pretrained encoder"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the models, then serve until interrupted; 2 when a model cannot be loaded."""
    if not args.run_dirs and not args.pretrained:
        print("attnlab serve: error: give at least one RUN_DIR or --pretrained minilm", file=sys.stderr)
        return USAGE_ERRORS
    try:
        import uvicorn

        from attnlab.web import create_app, load_models
    except ImportError as error:
        print(f"attnlab serve: error: {error.name or error} is missing: pip install 'attnlab[web]'", file=sys.stderr)
        return USAGE_ERRORS
    try:
        models = load_models(args.run_dirs, args.pretrained)
    except (CheckpointError, ConfigError, ImportError, OSError, ValueError) as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(f"attnlab serve: error: {first_line}", file=sys.stderr)
        return USAGE_ERRORS
    print(f"attnlab serve: {', '.join(models)} on http://{args.host}:{args.port}/", file=sys.stderr)
    uvicorn.run(create_app(models), host=args.host, port=args.port, log_level="warning")
    return 0
