"""Where a raw attention map and attention rollout disagree, on a ViT that attnlab trains.

A ViT on scikit-learn's 8x8 digits (2x2 patches: 16 patch tokens and a class token, 3 blocks of
4 heads, the ``configs/digits_vit.yaml`` model) is trained with a fixed seed and step count, then
every test image is read two ways:

- the *raw map*: the class token's row of the last block's attention, averaged over heads. It
  says which tokens the last block mixes into the class token, but those tokens are no longer the
  patches: each has already mixed with the others in the blocks below;
- *rollout* (Abnar & Zuidema, 2020): the blocks' head-averaged maps, each with the identity added
  for the residual path, multiplied from the first block to the last
  (:func:`attnlab.viz.attention_rollout`).

The numbers: Spearman's rank correlation between the two 16-patch maps per test image, how often
their most-attended patch differs, and for the example shown (the correctly classified test image
where they disagree most) both maps and the per-head maps of the last block behind the average.
Trains 1500 seeded steps on one CPU thread (``quick``: 150 steps).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import Tensor

from attnlab.experiments._plots import new_figure, save

NAME = "rollout_vs_raw"
FIGURES = ["example.png", "heads.png", "agreement.png"]
RUNTIME = "~2 min on one free core, ~5 min on a busy 2-core machine"

STEPS, QUICK_STEPS = 1500, 150
SEED = 0


def run_config(run_dir: Path, steps: int = STEPS) -> dict:
    """``configs/digits_vit.yaml`` (a test holds them equal) with a step budget instead of a clock;
    fewer ``steps`` shorten the warmup and the evaluation interval with them."""
    return {
        "task": "classification",
        "seed": SEED,
        "output_dir": str(run_dir),
        "model": {
            "type": "vit",
            "preset": "vit_digits_patch2_8",
            "embed_dim": 64,
            "depth": 3,
            "num_heads": 4,
            "dropout": 0.1,
        },
        "data": {"dataset": "digits", "batch_size": 64, "augment": False},
        "training": {
            "optimizer": "adamw",
            "lr": 3.0e-3,
            "weight_decay": 0.05,
            "schedule": "cosine",
            "warmup_steps": min(100, steps // 5),
            "max_steps": steps,
            "max_minutes": None,
            "eval_every": min(100, max(steps // 5, 1)),
            "eval_at_epoch_end": False,
            "log_every": 20,
            "grad_clip": 1.0,
            "label_smoothing": 0.1,
            "precision": "fp32",
            "num_threads": 1,
        },
    }


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rank correlation of each row pair: ``(N, P), (N, P) -> (N,)`` (no ties in float maps)."""
    ra = a.argsort(dim=-1).argsort(dim=-1).double()  # (N, P) ranks
    rb = b.argsort(dim=-1).argsort(dim=-1).double()
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return (ra * rb).sum(-1) / (ra.norm(dim=-1) * rb.norm(dim=-1))


def read_maps(classifier, images: Tensor) -> dict[str, Tensor]:
    """Class-token maps of every image: per block and head, the raw last-block mean, and rollout.

    Args:
        classifier: an ``attnlab.Classifier`` of a ViT with a class token.
        images: ``(N, 1, 8, 8)`` uint8 pixels.

    Returns:
        ``heads`` ``(N, H, gh, gw)`` (last block), ``raw`` and ``rollout`` ``(N, gh, gw)``,
        ``predicted`` ``(N,)`` class indices.
    """
    from attnlab.viz import attention_rollout, class_token_map

    results = classifier.classify(images, top_k=1, attention=True)
    heads, raw, rolled, predicted = [], [], [], []
    for result in results:
        maps = result.attention
        blocks = [maps["vit", layer] for layer in maps.layers("vit")]  # each (1, H, L, L)
        last = blocks[-1][0]  # (H, L, L)
        heads.append(torch.stack([class_token_map(head, maps.grid) for head in last]))  # (H, gh, gw)
        raw.append(class_token_map(last.mean(0), maps.grid))
        rolled.append(class_token_map(attention_rollout(blocks)[0], maps.grid))
        predicted.append(classifier.spec.classes.index(result.top[0][0]))
    return {
        "heads": torch.stack(heads),
        "raw": torch.stack(raw),
        "rollout": torch.stack(rolled),
        "predicted": torch.tensor(predicted),
    }


def run(out: Path, quick: bool = False) -> dict:
    """Train the ViT, read every test image both ways, draw ``FIGURES`` into ``out``; return the numbers."""
    import attnlab
    from attnlab.data.digits import load_digits
    from attnlab.training import RunConfig, Trainer

    steps = QUICK_STEPS if quick else STEPS
    with tempfile.TemporaryDirectory(prefix="attnlab-rollout-") as tmp:
        trained = Trainer(RunConfig.from_dict(run_config(Path(tmp) / "run", steps)), fresh=True).run()
        classifier = attnlab.load(trained.run_dir)
        test = load_digits().test
        maps = read_maps(classifier, test.images)
    correct = maps["predicted"].eq(test.labels)
    flat_raw, flat_roll = maps["raw"].flatten(1), maps["rollout"].flatten(1)  # (N, P)
    rho = spearman(flat_raw, flat_roll)  # (N,)
    top_differs = flat_raw.argmax(-1).ne(flat_roll.argmax(-1))
    example = int(torch.where(correct, rho, torch.inf).argmin())  # most disagreeing, correctly classified
    head_rho = spearman(maps["heads"][example].flatten(1), flat_raw[example].expand(maps["heads"].shape[1], -1))
    _draw_example(out, test.images[example, 0], maps, example, float(rho[example]))
    _draw_heads(out, test.images[example, 0], maps, example, head_rho)
    _draw_agreement(out, rho)
    return {
        "steps": steps,
        "seed": SEED,
        "test_images": len(test.labels),
        "test_accuracy": round(float(correct.double().mean()), 4),
        "spearman_median": round(float(rho.median()), 4),
        "spearman_below_0.5": round(float(rho.lt(0.5).double().mean()), 4),
        "top_patch_differs": round(float(top_differs.double().mean()), 4),
        "example": {
            "test_index": example,
            "label": int(test.labels[example]),
            "spearman": round(float(rho[example]), 4),
            "raw_top_patch": int(flat_raw[example].argmax()),
            "rollout_top_patch": int(flat_roll[example].argmax()),
            "head_vs_mean_spearman": [round(float(r), 4) for r in head_rho],
        },
    }


def _draw_example(out: Path, image: Tensor, maps: dict, index: int, rho: float) -> None:
    fig, axes = new_figure(3, width=3.0, height=3.0)
    _digit_panel(axes[0], image, "test image")
    _patch_panel(axes[1], image, maps["raw"][index], "raw: last block, head mean")
    _patch_panel(axes[2], image, maps["rollout"][index], f"rollout (ρ {rho:+.2f} with raw)")
    save(fig, out / "example.png")


def _draw_heads(out: Path, image: Tensor, maps: dict, index: int, head_rho: Tensor) -> None:
    heads = maps["heads"][index]  # (H, gh, gw)
    fig, axes = new_figure(len(heads) + 1, width=2.6, height=2.8)
    for h, (ax, head) in enumerate(zip(axes, heads)):
        _patch_panel(ax, image, head, f"head {h} (ρ {float(head_rho[h]):+.2f})")
    _patch_panel(axes[-1], image, maps["raw"][index], "mean of the heads")
    save(fig, out / "heads.png")


def _digit_panel(ax, image: Tensor, title: str) -> None:
    ax.imshow(image.numpy(), cmap="gray_r", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _patch_panel(ax, image: Tensor, patch_map: Tensor, title: str) -> None:
    """A ``(gh, gw)`` map on the image's pixel grid, its share of the class token written in each
    patch (percent), the strongest patch boxed and the digit's strokes outlined in white."""
    from matplotlib.patches import Rectangle

    height, width = image.shape
    gh, gw = patch_map.shape
    ph, pw = height / gh, width / gw
    ax.imshow(patch_map.numpy(), cmap="viridis", extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    ax.contour(image.numpy(), levels=[128], colors="white", linewidths=1.5)
    share = patch_map / patch_map.sum()
    for (row, col), value in zip(torch.cartesian_prod(torch.arange(gh), torch.arange(gw)).tolist(), share.flatten()):
        ax.text(
            (col + 0.5) * pw - 0.5,
            (row + 0.5) * ph - 0.5,
            f"{100 * float(value):.0f}",
            ha="center",
            va="center",
            fontsize=7,
            color="black" if value > share.max() * 0.6 else "white",
        )
    top = int(patch_map.argmax())
    ax.add_patch(Rectangle(((top % gw) * pw - 0.5, (top // gw) * ph - 0.5), pw, ph, fill=False, ec="red", lw=2))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def _draw_agreement(out: Path, rho: Tensor) -> None:
    fig, (ax,) = new_figure(1, width=5.0, height=3.0)
    ax.hist(rho.numpy(), bins=20, range=(-1, 1), color="tab:blue")
    ax.axvline(float(rho.median()), color="tab:red", linestyle="--", label=f"median {float(rho.median()):+.2f}")
    ax.set(xlabel="Spearman ρ, raw last-block map vs rollout", ylabel="test images")
    ax.legend()
    save(fig, out / "agreement.png")


def table(results: dict, lang: str) -> str:
    """The page's numbers: accuracy, agreement over the test set, the example's correlation."""
    example = results["example"]
    rows = (
        ("test images", "テスト画像", f"{results['test_images']}"),
        ("test accuracy", "テスト正解率", f"{results['test_accuracy']:.2%}"),
        ("median Spearman ρ (raw vs rollout)", "スピアマン順位相関 ρ の中央値 (生のマップ対ロールアウト)", None),
        ("images with ρ < 0.5", "ρ < 0.5 の画像の割合", f"{results['spearman_below_0.5']:.1%}"),
        ("most-attended patch differs", "最も注意されたパッチが食い違う割合", f"{results['top_patch_differs']:.1%}"),
        ("the example's ρ", "図の例の ρ", f"{example['spearman']:+.2f}"),
    )
    lines = ["| measure | value |" if lang == "en" else "| 指標 | 値 |", "|---|---|"]
    for en, ja, value in rows:
        value = f"{results['spearman_median']:+.2f}" if value is None else value
        lines.append(f"| {en if lang == 'en' else ja} | {value} |")
    return "\n".join(lines)
