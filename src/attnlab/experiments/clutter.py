"""What SE and spatial attention look at when the object sits on a cluttered background, and
whether they help there.

Squeeze-and-excitation (Hu et al., 2018, Eq. 2-3) pools each channel over the whole image,
z_c = (1/HW) Σ_ij u_c(i, j), and gates it, s = σ(W_2 δ(W_1 z)): it chooses *what* (channels),
never *where*. CBAM's spatial attention (Woo et al., 2018, Eq. 3),
M_s = σ(conv7×7([AvgPool_c(F); MaxPool_c(F)])), weighs *where*. The data makes "where" matter:
scikit-learn's 8×8 digits, doubled to 16×16, pasted at a random place on a 32×32 canvas strewn
with fragments of other digits (generated, seeded: a cluttered-digits set in the manner of
cluttered MNIST). The same small ResNet (``attnlab.models.cnn.AttentionCNN``) trains with no
attention, SE, spatial and CBAM for the same steps; we report test accuracy, draw the spatial
masks with ``attnlab.capture`` and ``attnlab.viz.mask_overlays``, the SE gates with
``gate_strip``, and measure how much more mask the digit gets than the clutter: the mean of M_s
inside the digit's box over its mean outside. About 5 minutes on one core.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from attnlab.data.digits import load_digits
from attnlab.experiments._plots import new_figure, percent_bars, save
from attnlab.experiments.pages import table_head
from attnlab.models.cnn import AttentionCNN, AttentionCNNConfig
from attnlab.viz import capture
from attnlab.viz.figures import gate_strip, mask_overlays

NAME = "clutter"
FIGURES = ["examples.png", "accuracy.png", "masks.png", "gates.png"]
RUNTIME = "~5 min"

MODELS = ("none", "se", "spatial", "cbam")
CANVAS, SCALE, FRAGMENTS, FRAGMENT = 32, 2, 8, 6
SEED = 0


def clutter_images(digits: torch.Tensor, copies: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluttered canvases of ``digits`` (uint8 ``(N, 1, 8, 8)``), ``copies`` per digit.

    Returns:
        ``(images uint8 (N * copies, 1, 32, 32), boxes (N * copies, 4) as top, left, bottom, right,
        source index (N * copies,))``; the digit is pasted over the clutter (pixel-wise max).
    """
    rng = np.random.default_rng(seed)
    big = np.kron(digits[:, 0].numpy(), np.ones((SCALE, SCALE), dtype=np.uint8))  # (N, 16, 16)
    n, side = len(big), big.shape[-1]
    images = np.zeros((n * copies, 1, CANVAS, CANVAS), dtype=np.uint8)
    boxes = np.zeros((n * copies, 4), dtype=np.int64)
    index = np.repeat(np.arange(n), copies)
    for row, source in enumerate(index):
        canvas = images[row, 0]
        for other in rng.integers(0, n, FRAGMENTS):
            y, x = rng.integers(0, side - FRAGMENT + 1, 2)
            ty, tx = rng.integers(0, CANVAS - FRAGMENT + 1, 2)
            patch = big[other, y : y + FRAGMENT, x : x + FRAGMENT]
            canvas[ty : ty + FRAGMENT, tx : tx + FRAGMENT] = np.maximum(
                canvas[ty : ty + FRAGMENT, tx : tx + FRAGMENT], patch
            )
        top, left = rng.integers(0, CANVAS - side + 1, 2)
        region = canvas[top : top + side, left : left + side]
        canvas[top : top + side, left : left + side] = np.maximum(region, big[source])
        boxes[row] = (top, left, top + side, left + side)
    return images, boxes, index


def data(quick: bool) -> dict[str, tuple]:
    """Cluttered train and test sets from the digits' own split (test digits never trained on)."""
    splits = load_digits(seed=SEED)
    train_digits = torch.cat([splits.train.images, splits.val.images])
    train_labels = torch.cat([torch.as_tensor(splits.train.labels), torch.as_tensor(splits.val.labels)])
    test_digits, test_labels = splits.test.images, torch.as_tensor(splits.test.labels)
    if quick:
        train_digits, train_labels = train_digits[:200], train_labels[:200]
        test_digits, test_labels = test_digits[:60], test_labels[:60]
    train_images, train_boxes, train_index = clutter_images(train_digits, 1 if quick else 4, SEED)
    test_images, test_boxes, test_index = clutter_images(test_digits, 1, SEED + 1)
    return {
        "train": (train_images, train_labels[train_index].numpy(), train_boxes),
        "test": (test_images, test_labels[test_index].numpy(), test_boxes),
    }


def _as_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).float() / 255.0  # (B, 1, H, W) in [0, 1]


def build(attention: str) -> AttentionCNN:
    """The small ResNet with ``attention`` in every residual block (one seed for all four)."""
    torch.manual_seed(SEED)
    return AttentionCNN(AttentionCNNConfig(in_channels=1, channels=(16, 32, 64), attention=attention, reduction=4))


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, steps: int) -> float:
    """Adam on cross-entropy, seeded batches of 64; returns the mean loss of the last 20 steps."""
    gen = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    x, y = _as_input(images), torch.from_numpy(labels)
    model.train()
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,), generator=gen)
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return sum(losses[-20:]) / max(len(losses[-20:]), 1)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    predictions = model(_as_input(images)).argmax(-1).numpy()
    return float((predictions == labels).mean())


@torch.no_grad()
def mask_focus(model: nn.Module, images: np.ndarray, boxes: np.ndarray) -> list[float]:
    """Per block with a spatial mask: mean mask inside the digit's box / mean mask outside it."""
    with capture(model, kinds="spatial_mask") as maps:
        model(_as_input(images))
    ratios = []
    for found in maps.select("spatial_mask"):
        mask = found.weights[:, 0].numpy()  # (B, h, w)
        factor = CANVAS // mask.shape[-1]
        inside = np.zeros(mask.shape, dtype=bool)
        for i, (top, left, bottom, right) in enumerate(boxes // factor):
            inside[i, top:bottom, left:right] = True
        ratios.append(round(float(mask[inside].mean() / mask[~inside].mean()), 4))
    return ratios


def run(out: Path, quick: bool = False) -> dict:
    """Train the four CNNs, measure them, draw ``FIGURES``."""
    sets = data(quick)
    steps = 10 if quick else 600
    results: dict = {"train_images": len(sets["train"][0]), "test_images": len(sets["test"][0]), "steps": steps}
    models = {}
    for attention in MODELS:
        model = models[attention] = build(attention)
        loss = train(model, *sets["train"][:2], steps)
        results[attention] = {
            "test_accuracy": round(accuracy(model, *sets["test"][:2]), 4),
            "final_loss": round(loss, 4),
            "parameters": sum(p.numel() for p in model.parameters()),
        }
        if attention in ("spatial", "cbam"):
            results[attention]["mask_inside_over_outside"] = mask_focus(model, sets["test"][0], sets["test"][2])
    _draw_examples(out, sets["test"])
    _draw_accuracy(out, results)
    _draw_masks(out, models, sets["test"][0][0], sets["test"][2][0])
    _draw_gates(out, models["se"], sets["test"][0][0])
    return results


def _draw_examples(out: Path, test: tuple) -> None:
    images, labels, boxes = test
    fig, axes = new_figure(6, width=1.6, height=1.8)
    for ax, image, label, (top, left, bottom, right) in zip(axes, images, labels, boxes):
        ax.imshow(image[0], cmap="gray")
        ax.add_patch(_box(top, left, bottom, right))
        ax.set_title(f"label {label}")
        ax.set_axis_off()
    save(fig, out / "examples.png")


def _box(top: int, left: int, bottom: int, right: int):
    from matplotlib.patches import Rectangle

    return Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, ec="tab:red", lw=1)


def _draw_accuracy(out: Path, results: dict) -> None:
    fig, (ax,) = new_figure(1, width=4.8)
    values = [results[m]["test_accuracy"] for m in MODELS]
    percent_bars(ax, list(MODELS), values)
    ax.set(ylabel="test accuracy", title="cluttered digits: CNN attention")
    save(fig, out / "accuracy.png")


@torch.no_grad()
def _draw_masks(out: Path, models: dict, image: np.ndarray, box: np.ndarray) -> None:
    masks, names = [], []
    for attention in ("spatial", "cbam"):
        with capture(models[attention], kinds="spatial_mask") as maps:
            models[attention](_as_input(image[None]))
        for found in maps.select("spatial_mask"):
            masks.append(found.weights[0, 0])
            names.append(f"{attention}, block {found.layer}")
    fig = mask_overlays(image[0], masks, names, cols=3)
    for ax in fig.axes[: len(masks)]:
        ax.add_patch(_box(*box))  # where the digit is
    save(fig, out / "masks.png")


@torch.no_grad()
def _draw_gates(out: Path, model: nn.Module, image: np.ndarray) -> None:
    with capture(model, kinds="se_gate") as maps:
        model(_as_input(image[None]))
    found = maps.select("se_gate")
    gates = [m.weights[0] for m in found]
    save(gate_strip(gates, [f"block {m.layer}" for m in found], title="SE gates s = σ(W₂ δ(W₁ z))"), out / "gates.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: accuracy, parameters and mask focus per model."""
    lines = table_head(
        lang,
        ["attention", "parameters", "test accuracy", "mask inside / outside the digit (per block)"],
        ["アテンション", "パラメータ数", "テスト正解率", "マスク: 数字の内側 / 外側 (ブロックごと)"],
    )
    for m in MODELS:
        r = results[m]
        focus = ", ".join(f"{v:.2f}" for v in r.get("mask_inside_over_outside", [])) or "-"
        lines.append(f"| {m} | {r['parameters']:,} | {100 * r['test_accuracy']:.1f}% | {focus} |")
    return "\n".join(lines)
