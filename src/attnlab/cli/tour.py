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
    extra: bool = False  # only with --only (it downloads a Debian package)


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
    Step(
        "fashion_vit",
        "Vision Transformer on Fashion-MNIST: where the class token looks",
        "A 28x28 item seen as 4x4 patches of 7x7 pixels: the class token's map per head and rollout. "
        "Fashion-MNIST の画像に重ねたクラストークンの注意。",
        ("configs/fashion_vit.yaml", "training.max_minutes=4.0"),
        ("--image", "{fashion_image}"),
        extra=True,
    ),
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``tour`` on the ``attnlab`` command."""
    parser = subparsers.add_parser("tour", help="train small models on built-in data and draw their attention")
    parser.add_argument("--out", default="runs/demo", help="the tour's folder (default runs/demo)")
    parser.add_argument(
        "--only", choices=[s.name for s in STEPS], action="append", help="run only these steps (fashion_vit: only so)"
    )
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Run every step (or ``--only`` some), then write ``OUT/index.html``; print its path."""
    from attnlab.cli.main import main

    out = Path(args.out)
    steps = [s for s in STEPS if s.name in args.only] if args.only else [s for s in STEPS if not s.extra]
    images = {}
    if any("{image}" in s.visualize for s in steps):
        images["image"] = _test_image("digits", 3, out / "digit.png")
    if any("{fashion_image}" in s.visualize for s in steps):
        images["fashion_image"] = _test_image("fashion-mnist", 9, out / "ankle_boot.png")
    for step in steps:
        run_dir = out / step.name
        commands = [] if step.train is None else [["train", *step.train, f"output_dir={run_dir}"]]
        source = [] if step.train is None else [str(run_dir)]
        visualize = [arg.format(**images) for arg in step.visualize]
        commands.append(["visualize", *source, *visualize, "--out", str(run_dir / "figures")])
        for argv in commands:
            print(f"\n$ attnlab {shlex.join(argv)}", flush=True)
            if code := main(argv):
                return code
    page = _write_index(out, steps)
    print(f"\nthe tour: {page.resolve()}")
    return 0


def _test_image(dataset: str, label: int, path: Path) -> Path:
    """The first test image of class ``label`` (never trained on) of ``dataset`` as a PNG."""
    from attnlab.data.digits import load_digits
    from attnlab.data.fashion_mnist import load_fashion_mnist

    test = (load_digits() if dataset == "digits" else load_fashion_mnist()).test
    index = int(test.labels.eq(label).nonzero()[0, 0])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(test.images[index, 0].numpy(), "L").save(path)  # uint8 (H, W)
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
