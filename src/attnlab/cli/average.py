"""``attnlab average RUN_DIR [--last N] [--out NAME]``: average the weights of a run's last checkpoints.

Writes ``RUN_DIR/checkpoints/NAME`` (``averaged`` by default) as the trainer writes a checkpoint,
atomically, with the newest input's config and tokenizer but no trainer state (nothing resumes
from an average): ``attnlab evaluate RUN_DIR --checkpoint NAME`` scores it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from attnlab.cli.inference import positive_int
from attnlab.training import checkpoints as ckpt
from attnlab.training.averaging import checkpoints_by_step, save_average
from attnlab.training.config import ConfigError
from attnlab.training.runs import load_run

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``average``."""
    parser = subparsers.add_parser("average", help="average the weights of a run's last checkpoints into a new one")
    parser.add_argument("run_dir")
    parser.add_argument(
        "--last", type=positive_int, default=None, help="average the N most recent saves (default: all of them)"
    )
    parser.add_argument("--out", default="averaged", help="name of the checkpoint written (default: averaged)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Average, write ``RUN_DIR/checkpoints/NAME``, print what was averaged."""
    run_dir = Path(args.run_dir)
    _check_out_name(args.out)
    chosen = _choose(run_dir, args.last)
    paths = [path for _, path in chosen]
    loaded = load_run(paths[-1])
    directory = ckpt.checkpoint_dir(run_dir, args.out)
    out = save_average(paths, loaded.model, directory, ckpt.read_config_text(paths[-1]), loaded.task.write_extras)
    inputs = ", ".join(f"{path.name} (step {step})" for step, path in chosen)
    print(f"averaged {len(chosen)} checkpoints: {inputs}")
    print(f"wrote {out}; score it with: attnlab evaluate {run_dir} --checkpoint {args.out}")
    return 0


def _check_out_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"--out {name!r} must be a plain name (letters, digits, _ and -), e.g. averaged")
    if name == "last":
        raise ConfigError("--out last would replace the checkpoint training resumes from; choose another name")


def _choose(run_dir: Path, last: int | None) -> list[tuple[int, Path]]:
    """The ``last`` most recent trainer checkpoints of ``run_dir`` (all when None), at least two."""
    if not run_dir.is_dir():
        raise ckpt.CheckpointError(f"run directory {run_dir} does not exist")
    found = checkpoints_by_step(run_dir)
    listed = ", ".join(f"{path.name} (step {step})" for step, path in found) or "none"
    wanted = len(found) if last is None else last
    if len(found) < max(wanted, 2):
        raise ckpt.CheckpointError(
            f"{run_dir} holds {len(found)} checkpoints of distinct steps ({listed}); averaging needs "
            f"{max(wanted, 2)}: pass a smaller --last, or train with more checkpoints kept"
        )
    return found[-wanted:]
