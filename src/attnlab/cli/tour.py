"""``attnlab tour``: train four small models on built-in data and draw their attention, one page.

Each step is an ``attnlab`` command, printed before it runs, so any figure can be made again by
hand: a Transformer translating generated English dates and numbers into Japanese (the alignment
shows the reordering), the same corpus in the Japanese -> English direction (the self-attention of
a Japanese sentence), a ViT on scikit-learn's digits (class-token map and rollout), a CBAM CNN on
the same digits (spatial masks and SE gates), and the real all-MiniLM-L6-v2 (head view). The
runs resume when the tour is run again; ``OUT/index.html`` links every page.
"""

from __future__ import annotations

import argparse
import html
import shlex
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from attnlab.data.cache import atomic_write_text

__all__ = ["STEPS", "add_parser", "run"]


@dataclass(frozen=True)
class Step:
    """One stop of the tour: a run to train (or none) and a page to draw from it."""

    name: str
    title: str
    note: str
    train: tuple[str, ...] | None
    visualize: tuple[str, ...]


STEPS = (
    Step(
        "minilm",
        "all-MiniLM-L6-v2: the head view of a real pretrained BERT",
        "The 12 heads of each layer of a real sentence encoder, computed beside its fused SDPA kernel. "
        "実際の事前学習済みモデルの各ヘッドが、どの単語からどの単語へ注意を向けているか。",
        None,
        ("--pretrained", "minilm", "--text", "The cat sat on the mat because it was tired.", "--layers=-1", "--words"),
    ),
    Step(
        "translation",
        "Transformer, English -> Japanese dates and numbers: the alignment",
        "Source-target attention of each generated piece: 「2024年3月15日」 reads the year first, so the "
        "alignment runs against the diagonal. 語順が入れ替わる翻訳のアラインメント。",
        ("configs/generated_transformer.yaml", "training.max_steps=1000", "training.max_minutes=2.0"),
        ("--text", "March 15, 2024", "--layers=-1"),
    ),
    Step(
        "japanese",
        "Transformer, Japanese -> English: a Japanese sentence's self-attention",
        "The encoder's self-attention over a Japanese input. 日本語の文の自己注意: 各トークンがどこを見ているか。",
        (
            "configs/generated_transformer.yaml",
            "data.corpus.source_lang=ja",
            "data.corpus.target_lang=en",
            "training.max_steps=800",
            "training.max_minutes=1.5",
        ),
        ("--text", "2024年3月15日", "--layers=-1"),
    ),
    Step(
        "digits_vit",
        "Vision Transformer on 8x8 digits: class-token map and rollout",
        "Where the class token looks in the last block, per head and fused, and attention rollout "
        "(Abnar & Zuidema, 2020) through every block. クラストークンの注意とロールアウト。",
        ("configs/digits_vit.yaml", "training.max_minutes=1.0"),
        ("--image", "{image}"),
    ),
    Step(
        "digits_cnn",
        "CNN with CBAM on 8x8 digits: spatial masks and channel gates",
        "Each residual block's spatial mask over the digit, and its SE-style channel gates. "
        "空間アテンションのマスクとチャネルアテンション (SE) のゲート。",
        ("configs/digits_cnn_cbam.yaml",),
        ("--image", "{image}"),
    ),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tour`` on the ``attnlab`` command."""
    parser = subparsers.add_parser("tour", help="train small models on built-in data and draw their attention")
    parser.add_argument("--out", default="runs/demo", help="the tour's folder (default runs/demo)")
    parser.add_argument("--only", choices=[s.name for s in STEPS], action="append", help="run only these steps")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run every step (or ``--only`` some), then write ``OUT/index.html``; print its path."""
    from attnlab.cli.main import main

    out = Path(args.out)
    image = _digit_image(out / "digit.png")
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    for step in steps:
        run_dir = out / step.name
        commands = [] if step.train is None else [["train", *step.train, f"output_dir={run_dir}"]]
        source = [] if step.train is None else [str(run_dir)]
        visualize = [arg.format(image=image) for arg in step.visualize]
        commands.append(["visualize", *source, *visualize, "--out", str(run_dir / "figures")])
        for argv in commands:
            print(f"\n$ attnlab {shlex.join(argv)}", flush=True)
            if code := main(argv):
                return code
    page = _write_index(out, steps)
    print(f"\nthe tour: {page.resolve()}")
    return 0


def _digit_image(path: Path) -> Path:
    """The first 3 of scikit-learn's digits test split (never trained on) as an 8x8 PNG."""
    from attnlab.data.digits import load_digits

    test = load_digits().test
    index = int(test.labels.eq(3).nonzero()[0, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(test.images[index, 0].numpy(), "L").save(path)  # uint8 (8, 8)
    return path


def _write_index(out: Path, steps: list[Step]) -> Path:
    """``OUT/index.html``: one linked section per step."""
    sections = "\n".join(
        f'<section><h2><a href="{html.escape(f"{s.name}/figures/index.html")}">{html.escape(s.title)}</a></h2>'
        f"<p>{html.escape(s.note)}</p></section>"
        for s in steps
    )
    page = (
        '<!doctype html>\n<html lang="ja"><head><meta charset="utf-8"><title>attnlab: the tour</title>'
        "<style>body{font-family:sans-serif;max-width:52em;margin:2em auto;line-height:1.6}</style></head>\n"
        f"<body><h1>attnlab: seeing attention</h1>\n{sections}\n</body></html>\n"
    )
    path = out / "index.html"
    atomic_write_text(path, page)
    return path
