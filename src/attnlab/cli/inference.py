"""``attnlab evaluate | translate | classify RUN_DIR ...``: use a trained run's best checkpoint.

translate and classify go through ``attnlab.load`` (a ``Translator`` or ``Classifier``); evaluate
reads the run with its data and scores it with the task's ``evaluate``, which translates through a
``Translator`` of the model."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from attnlab.cli.format import format_metrics, format_per_class
from attnlab.data.image_files import image_conversion
from attnlab.inference import Translation, Translator, load
from attnlab.inference.loading import PRECISIONS, run_precision
from attnlab.training.config import ConfigError
from attnlab.training.devices import autocast_to
from attnlab.training.runs import load_run
from attnlab.training.translation import beam_suffix
from attnlab.viz import format_attention_table
from attnlab.viz.capture import CaptureSpec

CHECKPOINT_HELP = "best (default), last, or a checkpoint of the run by name (e.g. one written by attnlab average)"


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate``, ``translate`` and ``classify``."""
    evaluate = subparsers.add_parser("evaluate", help="metrics of a run's best checkpoint on a split")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--split", default="test", help="test (default), val/dev or train")
    evaluate.add_argument("--checkpoint", default="best", help=CHECKPOINT_HELP)
    evaluate.add_argument(
        "--beam", type=positive_int, default=1, help="translation runs: beam size of the decoding scored (1: greedy)"
    )
    evaluate.set_defaults(func=run_evaluate)

    translate = subparsers.add_parser("translate", help="translate --text or stdin lines with a translation run")
    translate.add_argument("run_dir")
    translate.add_argument("--text", action="append", help="a sentence (repeatable); otherwise stdin, one per line")
    translate.add_argument("--beam", type=positive_int, default=1, help="beam size (1: greedy)")
    translate.add_argument("--checkpoint", default="best", help=CHECKPOINT_HELP)
    translate.add_argument(
        "--show-attention",
        action="store_true",
        help="also print each sentence's source-target attention (rows: target pieces)",
    )
    translate.set_defaults(func=run_translate)

    classify = subparsers.add_parser("classify", help="top-k labels of image files with a classification run")
    classify.add_argument("run_dir")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--top-k", type=positive_int, default=3, help="labels shown per image")
    classify.add_argument("--checkpoint", default="best", help=CHECKPOINT_HELP)
    classify.add_argument(
        "--no-resize",
        action="store_true",
        help="an image of another size than the model's input is an error (default: resize it)",
    )
    classify.set_defaults(func=run_classify)

    for command in (evaluate, translate):
        command.add_argument(
            "--no-repeat-ngram-size",
            type=int,
            default=None,
            metavar="N",
            help="translation runs: never repeat an n-gram within a translation (0: off; default: the run's "
            "data.no_repeat_ngram_size)",
        )
        command.add_argument(
            "--repetition-penalty",
            type=float,
            default=None,
            metavar="P",
            help="translation runs: discourage pieces a translation already holds, P > 1 (1: off; default: "
            "the run's data.repetition_penalty)",
        )
        command.add_argument(
            "--length-penalty",
            type=float,
            default=None,
            metavar="A",
            help="translation runs, beam search: alpha of the GNMT length penalty, higher favours longer "
            "translations (0: rank by log-probability; default: the run's data.length_penalty)",
        )
        command.add_argument(
            "--avoid-repetitive",
            action="store_true",
            default=None,
            help="translation runs: beam search returns the best hypothesis that does not repeat a word 4 "
            "times in a row or a 3-gram 3 times, when the n-best holds one; a translation still repetitive "
            "is searched again with no 2-gram repeated (default: the run's data.avoid_repetitive)",
        )
        command.add_argument(
            "--mbr",
            action="store_true",
            default=None,
            help="translation runs, beam search: return the minimum-Bayes-risk hypothesis of the n-best "
            "(sentence chrF as the utility) instead of the best-scored one (default: the run's data.mbr)",
        )

    for command in (evaluate, translate, classify):
        command.add_argument(
            "--precision",
            default="run",
            choices=PRECISIONS,
            help="run (default: the run's training.precision, as its final test was scored), fp32, bf16 "
            "autocast (on CPU the decoder keeps bf16 copies of its weights: faster search, scores within "
            "bf16 rounding), auto (bf16 where the hardware has it), or int8 (translation runs on CPU: "
            "the decoder multiplies by int8 copies of its weights)",
        )


def run_evaluate(args: argparse.Namespace) -> int:
    """Print the metrics and write them, with the checkpoint that scored them, to
    ``RUN_DIR/<split>_metrics_evaluate_<checkpoint>[_beamK][...].json`` (plus plots, or the
    translations in ``<split>_translations_evaluate_<checkpoint>[...].tsv``); the trainer's own
    ``<split>_metrics.json`` and ``translations_<split>.tsv`` are left as they are."""
    loaded = load_run(args.run_dir, args.checkpoint, need_data=True)
    options = {}
    if args.beam > 1:
        if loaded.config.task != "translation":
            raise ConfigError(f"--beam applies to translation runs; {args.run_dir} is a {loaded.config.task} run")
        options["beam_size"] = args.beam
    if args.precision == "int8":
        if loaded.config.task != "translation":
            raise ConfigError(
                f"--precision int8 applies to translation runs; {args.run_dir} is a {loaded.config.task} run"
            )
        options["int8"] = True
    decoding = _decoding_options(args)
    if decoding:
        if loaded.config.task != "translation":
            raise ConfigError(
                "decoding options (--no-repeat-ngram-size, --repetition-penalty, --length-penalty, "
                "--avoid-repetitive, --mbr) apply to "
                f"translation runs; {args.run_dir} is a {loaded.config.task} run"
            )
        data = dataclasses.replace(loaded.task.config.data, **decoding)  # checks the values
        loaded.task.config = dataclasses.replace(loaded.task.config, data=data)
    name = evaluation_file_name(args.split, loaded.checkpoint.name, args.beam, decoding)
    name = name.replace(".json", "_int8.json") if args.precision == "int8" else name
    if loaded.config.task == "translation":
        options["translations_name"] = name.replace("_metrics_", "_translations_").replace(".json", ".tsv")
    device = next(loaded.model.parameters()).device
    with torch.no_grad(), autocast_to(run_precision(args.precision, loaded.config, device), device):
        metrics = loaded.task.evaluate(loaded.model, args.split, output_dir=Path(args.run_dir), **options)
    out = Path(args.run_dir) / name
    record = {"checkpoint": str(loaded.checkpoint), "split": args.split, **metrics}
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"{args.split} ({loaded.checkpoint}): {format_metrics(metrics)}")
    if (per_class := format_per_class(metrics)) is not None:
        print(per_class)
    print(f"wrote {out}")
    return 0


def evaluation_file_name(split: str, checkpoint: str, beam: int, decoding: dict | None = None) -> str:
    """``test_metrics_evaluate_best_beam5.json``: the report of ``attnlab evaluate``, apart from the
    trainer's (``..._no_repeat_ngram_size3.json`` with a decoding option given)."""
    options = "".join(f"_{name}{value:g}" for name, value in sorted((decoding or {}).items()))
    return f"{split}_metrics_evaluate_{checkpoint}{beam_suffix(beam)}{options}.json"


def _decoding_options(args: argparse.Namespace) -> dict:
    """The decoding options given on the command line (repetition, length penalty, n-best choice), as
    data config keys."""
    given = {
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "repetition_penalty": args.repetition_penalty,
        "length_penalty": args.length_penalty,
        "avoid_repetitive": args.avoid_repetitive,
        "mbr": args.mbr,
    }
    if given["no_repeat_ngram_size"] is not None and given["no_repeat_ngram_size"] < 0:
        raise ConfigError(f"--no-repeat-ngram-size ({args.no_repeat_ngram_size}) must be >= 0 (0: off)")
    if given["repetition_penalty"] is not None and not given["repetition_penalty"] > 0:
        raise ConfigError(f"--repetition-penalty ({args.repetition_penalty}) must be > 0 (1: off)")
    if given["length_penalty"] is not None and not given["length_penalty"] >= 0:
        raise ConfigError(f"--length-penalty ({args.length_penalty}) must be >= 0 (0: rank by log-probability)")
    return {name: value for name, value in given.items() if value is not None}


def run_translate(args: argparse.Namespace) -> int:
    """One translation per input line, in order (with ``--show-attention``, each followed by its table)."""
    translator: Translator = load(args.run_dir, args.checkpoint, precision=args.precision, task="translation")
    texts = args.text if args.text else [line.rstrip("\n") for line in sys.stdin]
    search = {"beam": args.beam, **_decoding_options(args)}
    if not args.show_attention:
        for line in translator.translate(texts, **search):
            print(line)
        return 0
    last_layer = CaptureSpec(layers=-1, kinds=_source_attention_kind(translator))
    for result in translator.translate(texts, **search, attention=last_layer):
        print(result.translation)
        print(_attention_table(result) + "\n")
    return 0


def _attention_table(result: Translation) -> str:
    """The source attention as a table (an empty line for a blank input)."""
    if not result.target_pieces:
        return ""
    return format_attention_table(result.alignment(), result.target_pieces, result.source_pieces)


def _source_attention_kind(translator: Translator) -> str:
    kinds = [kind for kind, _, _ in translator.model.attention_sites()]
    return "rnn_source" if "rnn_source" in kinds else "cross"


def run_classify(args: argparse.Namespace) -> int:
    """``IMAGE: label (p), label (p), ...`` per image; a note on stderr for each image converted to fit."""
    classifier = load(args.run_dir, args.checkpoint, precision=args.precision, task="classification")
    spec = classifier.spec
    for path in args.images:
        conversion = image_conversion(path, spec.channels, spec.image_size, resize=not args.no_resize)
        if conversion is not None:
            print(
                f"note: {path} is {conversion.source}, converted to {conversion.target} as the model expects",
                file=sys.stderr,
            )
    predictions = classifier.classify(args.images, top_k=args.top_k, resize=not args.no_resize)
    for path, top in zip(args.images, predictions):
        print(f"{path}: " + ", ".join(f"{label} ({p:.3f})" for label, p in top))
    return 0
