"""Fashion-MNIST: ViT vs plain CNN vs CNN+SE vs CNN+spatial attention, test accuracy and CPU time.

Each model trains with the shared :class:`~attnlab.training.Trainer` from its own config
(``configs/fashion_{vit,cnn,cnn_se,cnn_spatial}.yaml``), one after another, fresh; the trainer
then evaluates the best checkpoint (validation accuracy, 5,000 images held out of the training
set) on the 10,000 test images. The three CNN configs differ only in ``model.attention``.

Prints a Markdown table and writes ``benchmarks/results/fashion_table.json`` (``--only`` replaces
that model's row in an existing file and keeps the others).

    .venv/bin/python -m benchmarks.fashion_table                # all four, ~15 minutes each
    .venv/bin/python -m benchmarks.fashion_table --only cnn_se  # one model
    .venv/bin/python -m benchmarks.fashion_table --minutes 1    # smoke run: every training cut at 1 minute
    .venv/bin/python -m benchmarks.fashion_table --table-from benchmarks/results/fashion_table.json

The CPU may be shared: each row records the share of all cores that other processes used while
it trained (0% on a quiet machine; 50% on two cores means one other busy thread), and the load
average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from attnlab.training import Trainer, load_config
from benchmarks.common import RESULTS, timed

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "vit": "fashion_vit.yaml",
    "cnn": "fashion_cnn.yaml",
    "cnn_se": "fashion_cnn_se.yaml",
    "cnn_spatial": "fashion_cnn_spatial.yaml",
}
RESULT_FILE = RESULTS / "fashion_table.json"


def train_and_test(name: str, minutes: float | None, out: Path) -> dict[str, Any]:
    """Train one model fresh from its config; the row of the table, test metrics of the best checkpoint."""
    overrides = [f"output_dir={out / name}", "training.final_split=test"]
    if minutes is not None:
        overrides.append(f"training.max_minutes={minutes}")
    config = load_config(ROOT / "configs" / MODELS[name], overrides)
    trainer = Trainer(config, fresh=True)
    load_before = os.getloadavg()[0]
    runs = []
    wall, cpu, foreign = timed(lambda: runs.append(trainer.run()))
    result = runs[0]
    test, t = result.final_metrics, trainer.config.training
    batches_per_epoch = trainer.task.batches_per_epoch()
    return {
        "model": name,
        "config": f"configs/{MODELS[name]}",
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_seconds": round(result.elapsed_seconds, 1),
        "wall_seconds": round(wall, 1),
        "steps": result.step,
        "epochs": round(result.step / batches_per_epoch, 2),
        "images_per_second": round(result.step * config.data.batch_size / max(result.elapsed_seconds, 1e-9), 1),
        "stop_reason": result.stop_reason,
        "test_accuracy": test.get("accuracy"),
        "test_per_class_accuracy": test.get("per_class_accuracy"),
        "best_val_accuracy": result.best_metric,
        "best_step": result.best_step,
        "precision": t.precision,
        "threads": torch.get_num_threads(),
        "max_minutes": t.max_minutes,
        "max_steps": t.max_steps,
        "cpu_seconds": round(cpu, 1),
        "others_cpu_share": round(foreign, 3),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "run_dir": str(result.run_dir),
        "model_config": trainer.config.model.to_dict(),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    head = [
        "model",
        "params",
        "train min",
        "wall min",
        "steps",
        "epochs",
        "images/s",
        "test acc",
        "best val acc",
        "others' share of the cores",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["model"],
            f"{r['parameters']:,}",
            f"{r['train_seconds'] / 60:.1f}",
            f"{r['wall_seconds'] / 60:.1f}",
            str(r["steps"]),
            f"{r['epochs']:.1f}",
            f"{r['images_per_second']:.0f}",
            _percent(r["test_accuracy"]),
            _percent(r["best_val_accuracy"]),
            f"{100 * r['others_cpu_share']:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _merged(previous: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``new`` replacing those of the same model in ``previous``, in ``MODELS`` order."""
    by_name = {r["model"]: r for r in previous} | {r["model"]: r for r in new}
    return [by_name[m] for m in MODELS if m in by_name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only",
        choices=list(MODELS),
        action="append",
        help="train only this model (repeatable); its row replaces the old one in the JSON",
    )
    parser.add_argument("--minutes", type=float, help="cap every training at this many minutes (default: the configs')")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "fashion_table", help="run directories")
    parser.add_argument("--table-from", type=Path, help="only print the table of an earlier JSON report")
    args = parser.parse_args()
    if args.table_from is not None:
        print(markdown(json.loads(args.table_from.read_text(encoding="utf-8"))["results"]))
        return
    rows = []
    for name in args.only or list(MODELS):
        rows.append(train_and_test(name, args.minutes, args.out))
        r = rows[-1]
        print(
            f"{name}: test accuracy {_percent(r['test_accuracy'])} after {r['steps']} steps, "
            f"{r['train_seconds'] / 60:.1f} min training ({r['stop_reason']})",
            flush=True,
        )
    previous = (
        json.loads(RESULT_FILE.read_text(encoding="utf-8"))["results"] if args.only and RESULT_FILE.is_file() else []
    )
    report = {
        "command": "python -m benchmarks.fashion_table" + (f" --minutes {args.minutes}" if args.minutes else ""),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "results": _merged(previous, rows),
    }
    print("\n" + markdown(report["results"]) + "\n", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    RESULT_FILE.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {RESULT_FILE}")


if __name__ == "__main__":
    main()
