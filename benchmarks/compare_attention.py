"""Encoder-decoder without attention vs Bahdanau vs Luong (dot/general/concat) vs the Transformer.

Every model trains with the shared :class:`~attnlab.training.Trainer` on the same data (the
``data`` section of one config per corpus, so one SentencePiece model and one split) for the
same CPU budget (``--minutes`` of training per model, the same thread count), each with its own
recipe (the ``model`` and ``training`` sections of ``configs/generated_rnn_*.yaml`` and
``configs/generated_transformer.yaml``). The best checkpoint (dev BLEU) then translates the
whole test split greedily; we report exact match (generated) or BLEU/chrF (LibreOffice),
parameters, training time and steps, and the same metric by source length: the bucket table is
where a single fixed context vector shows its limit on long inputs (Cho et al., 2014, Fig. 4;
Bahdanau et al., 2015, Fig. 2).

Prints a Markdown table and writes ``benchmarks/results/compare_attention_CORPUS.json``.

    .venv/bin/python benchmarks/compare_attention.py [--corpus generated|libreoffice|both]
        [--minutes 2] [--models none,bahdanau,...] [--threads 1] [--jobs 1]

``--jobs 2`` trains two models at once (each with ``--threads``): on a 2-core machine, two
1-thread runs finish the table in half the wall time at the same per-model budget. The CPU may be
shared: the load average before and after each run is recorded beside it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from attnlab.inference import Translator
from attnlab.models.rnn_seq2seq import ATTENTION_VARIANTS
from attnlab.training import Trainer, find_checkpoint, load_weights
from attnlab.training.config import RunConfig, apply_overrides
from attnlab.training.metrics import translation_metrics

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
RESULTS = Path(__file__).parent / "results"
MODELS = {
    **{name: f"generated_rnn_{name}.yaml" for name in ATTENTION_VARIANTS},
    "transformer": "generated_transformer.yaml",
}
# The data section every model of a corpus shares, and the metrics shown per length bucket
# (exact match alone is all-or-nothing on long numbers; chrF shows how far off they are).
CORPORA = {
    "generated": ("generated_transformer.yaml", ("exact_match", "chrf")),
    "libreoffice": ("libreoffice_rnn_bahdanau.yaml", ("chrf",)),
}
# Source-length buckets in SentencePiece tokens (what the encoder reads): (low, high) inclusive,
# high None = open. Dates are 3-12 tokens, numbers in words or digits 1-44.
BUCKETS = {
    "generated": [(1, 4), (5, 8), (9, 12), (13, 16), (17, 24), (25, None)],
    "libreoffice": [(1, 10), (11, 20), (21, 40), (41, 80), (81, None)],
}


def _read(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text(encoding="utf-8"))


def run_config(model: str, corpus: str, args: argparse.Namespace) -> RunConfig:
    """The model's config with the corpus's shared data section and the common budget."""
    values = _read(MODELS[model])
    values["data"] = _read(CORPORA[corpus][0])["data"]
    overrides = [
        f"training.max_minutes={args.minutes}",
        f"training.num_threads={args.threads}",
        "training.final_split=null",
        "training.tensorboard=false",
        f"training.eval_every={args.eval_every}",
        "data.eval_max_sentences=200",
        f"output_dir={args.out / corpus / model}",
        f"seed={args.seed}",
    ]
    return RunConfig.from_dict(apply_overrides(values, overrides))


def bucket_name(low: int, high: int | None) -> str:
    return f"{low}+" if high is None else f"{low}-{high}"


def evaluate_by_length(trainer: Trainer, corpus: str) -> dict[str, Any]:
    """Greedy translations of the whole test split by the best checkpoint: overall and per bucket."""
    best = find_checkpoint(trainer.run_dir, "best")
    if best is not None:
        load_weights(trainer.model, best)
    task = trainer.task
    pairs = task.corpus.splits["test"]
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    hypotheses = Translator(trainer.model, task.tokenizer, task.config.data).translate(sources)
    overall = translation_metrics(hypotheses, references, task.target_lang)
    lengths = [len(ids) for ids in task.tokenizer.source.encode(sources)]
    buckets = {}
    for low, high in BUCKETS[corpus]:
        rows = [i for i, n in enumerate(lengths) if low <= n and (high is None or n <= high)]
        if rows:
            metrics = translation_metrics(
                [hypotheses[i] for i in rows], [references[i] for i in rows], task.target_lang
            )
            buckets[bucket_name(low, high)] = {"sentences": len(rows), **_scalars(metrics)}
    examples = [
        {"source": s, "reference": r, "hypothesis": h} for s, r, h in list(zip(sources, references, hypotheses))[:5]
    ]
    return {"test": {"sentences": len(pairs), **_scalars(overall)}, "by_source_tokens": buckets, "examples": examples}


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in metrics.items() if isinstance(v, (int, float))}


def train_and_evaluate(model: str, corpus: str, args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    trainer = Trainer(run_config(model, corpus, args), fresh=True)
    start = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - start
    evaluation = evaluate_by_length(trainer, corpus)
    return {
        "model": model,
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "train_seconds": round(result.elapsed_seconds, 1),
        "wall_seconds": round(wall, 1),
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "best_dev_bleu": result.best_metric,
        "best_step": result.best_step,
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "model_config": trainer.config.model.to_dict(),
        **evaluation,
    }


def markdown(corpus: str, rows: list[dict[str, Any]]) -> str:
    metrics = CORPORA[corpus][1]
    buckets = [bucket_name(*b) for b in BUCKETS[corpus]]
    sizes = rows[0]["by_source_tokens"] if rows else {}
    head = ["model", "params", "train s", "steps", "exact", "BLEU", "chrF"]
    head += [f"{b} tok (n={sizes.get(b, {}).get('sentences', 0)})" for b in buckets]
    lines = [
        f"**{corpus}** (test split, greedy; by-length columns: {' / '.join(metrics)} by source tokens)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        t = r["test"]
        cells = [
            r["model"],
            f"{r['parameters']:,}",
            f"{r['train_seconds']:.0f}",
            str(r["steps"]),
            f"{100 * t['exact_match']:.1f}%",
            f"{t['bleu']:.1f}",
            f"{t['chrf']:.1f}",
        ]
        for b in buckets:
            bucket = r["by_source_tokens"].get(b)
            cells.append("-" if bucket is None else " / ".join(_format(m, bucket[m]) for m in metrics))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(metric: str, value: float) -> str:
    return f"{100 * value:.0f}%" if metric == "exact_match" else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=[*CORPORA, "both"], default="generated")
    parser.add_argument("--minutes", type=float, default=2.0, help="training minutes per model")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {list(MODELS)}")
    parser.add_argument("--threads", type=int, default=1, help="threads per model")
    parser.add_argument("--jobs", type=int, default=1, help="models trained at once, in separate processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--eval-every",
        type=int,
        default=200,
        help="steps between dev evaluations (on 200 sentences; the best checkpoint is tested); "
        "dev decoding counts against the budget, and the trainer also evaluates where it stops",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "compare_attention", help="run directories")
    parser.add_argument("--table-from", type=Path, help="only print the tables of an earlier JSON report")
    args = parser.parse_args()
    if args.table_from is not None:
        for corpus, rows in json.loads(args.table_from.read_text(encoding="utf-8"))["results"].items():
            print(markdown(corpus, rows) + "\n")
        return
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; expected some of {list(MODELS)}")
    corpora = list(CORPORA) if args.corpus == "both" else [args.corpus]
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    for corpus in corpora:
        rows = run_models(models, corpus, args)
        print("\n" + markdown(corpus, rows) + "\n", flush=True)
        report = {
            "minutes_per_model": args.minutes,
            "threads": args.threads,
            "jobs": args.jobs,
            "seed": args.seed,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
            "results": {corpus: rows},
        }
        path = RESULTS / f"compare_attention_{corpus}.json"
        path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
        print(f"wrote {path}")


def run_models(models: list[str], corpus: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and evaluate every model, ``args.jobs`` at a time; rows in the order of ``models``."""
    if args.jobs == 1:
        rows = []
        for model in models:
            rows.append(train_and_evaluate(model, corpus, args))
            print(f"{corpus}/{model}: {rows[-1]['test']}", flush=True)
        return rows
    # spawn: each run starts from a fresh interpreter, its own thread pool and allocator.
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {model: pool.submit(train_and_evaluate, model, corpus, args) for model in models}
        rows = []
        for model, future in futures.items():
            rows.append(future.result())
            print(f"{corpus}/{model}: {rows[-1]['test']}", flush=True)
        return rows


if __name__ == "__main__":
    main()
