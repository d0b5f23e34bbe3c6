"""``attnlab train CONFIG.yaml [key=value ...]``: train, resuming from ``RUN_DIR/checkpoints/last``."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from tqdm import tqdm

from attnlab.cli.format import format_metrics, format_per_class
from attnlab.training import ProgressEvent, Trainer, load_config
from attnlab.training.memory import relaunch_environment


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``train``."""
    parser = subparsers.add_parser("train", help="train a model from a YAML config (resumes automatically)")
    parser.add_argument("config", help="the run config, e.g. configs/digits_vit.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, values read as YAML: training.max_steps=200 model.embed_dim=128",
    )
    parser.add_argument("--fresh", action="store_true", help="start over even if the run directory has a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def relaunch(allocator: str, argv: list[str]) -> None:
    """Start this command again with ``training.allocator`` preloaded (see attnlab.training.memory);
    returns only where no new start is needed."""
    environment = relaunch_environment(allocator)
    if environment is not None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "attnlab.cli.main", *argv], environment)


class ProgressBar:
    """A tqdm bar fed by the trainer's :class:`ProgressEvent` callback: loss, LR, units/s, ETA."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None
        self.rate = 0.0
        self.last = time.monotonic()

    def __call__(self, event: ProgressEvent) -> None:
        handler = getattr(self, f"_on_{event.kind}", None)
        if handler is not None:
            handler(event)

    def _on_start(self, event: ProgressEvent) -> None:
        tqdm.write(event.message)
        self.bar = tqdm(
            total=event.total_steps, initial=event.step, unit="step", dynamic_ncols=True, disable=not self.enabled
        )

    def _on_step(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        rate = event.units / max(now - self.last, 1e-9)
        self.rate = rate if self.rate == 0 else 0.9 * self.rate + 0.1 * rate
        self.last = now
        self.bar.update(event.step - self.bar.n)
        loss = f"{event.loss:.4f}" if event.loss is not None and math.isfinite(event.loss) else str(event.loss)
        self.bar.set_postfix_str(
            f"ep {event.epoch} loss {loss} lr {event.lr:.2e} {self.rate:,.0f} {event.unit}/s", refresh=False
        )

    def _on_eval(self, event: ProgressEvent) -> None:
        tqdm.write(f"step {event.step} eval: {format_metrics(event.metrics)}")

    def _on_skip(self, event: ProgressEvent) -> None:
        tqdm.write(f"warning: {event.message}")

    def _on_end(self, event: ProgressEvent) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    """Train; print the stop reason, the best validation metric and the final split's metrics."""
    config = load_config(args.config, args.overrides)
    if getattr(args, "process_argv", None) is not None:
        relaunch(config.training.allocator, args.process_argv)
    progress = ProgressBar(enabled=not args.no_progress)
    trainer = Trainer(config, progress=progress, fresh=args.fresh, debug=getattr(args, "debug", False))
    started = time.monotonic()
    result = trainer.run()
    if not trainer.is_main:  # under torchrun, rank 0 reports
        return 0
    print(
        f"stopped: {result.stop_reason} at step {result.step} (epoch {result.epoch}) after "
        f"{result.elapsed_seconds:.1f} s training, {time.monotonic() - started:.1f} s wall"
    )
    if result.best_metric is not None:
        print(
            f"best {trainer.task.eval_split} {trainer.task.selection_metric}: {result.best_metric:.4f} "
            f"at step {result.best_step}"
        )
    if result.bad_batches:
        print(f"skipped batches: {result.bad_batches}")
    if result.final_metrics:
        print(f"{config.training.final_split}: {format_metrics(result.final_metrics)}")
        if (per_class := format_per_class(result.final_metrics)) is not None:
            print(per_class)
    print(f"run directory: {result.run_dir}")
    return 0
