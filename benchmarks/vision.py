"""Images/s of attnlab's ViT against Hugging Face's ``ViTForImageClassification`` (SDPA), same weights.

Both models run in one process, interleaved (ours, ours tuned, HF, ours, ...) on 2 threads after a
warm-up; the ratio of median times is reported (>1 means ours is faster). Blocks during which
other processes took a noticeable share of the CPU (read from /proc/stat) are dropped when
enough clean ones remain. "tuned" is our model with the attention path chosen per case (SDPA, but
the explicit path for bf16 training). Cases: ViT-Ti/16 at 224 and the 28x28 model, inference and
a training step (forward, cross-entropy, backward, SGD), fp32 and bf16 autocast.

Usage: ``python -m benchmarks.vision [--quick] [--reps N] [--threads 2] [--out benchmarks/results/vision.json]``
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from attnlab.models.vit import ViT, vit_config
from attnlab.models.vit_interop import vit_to_hf
from benchmarks.common import timed, write_json_to

MODELS = {"vit_tiny_patch16_224": {"infer": 16, "train": 8}, "vit_mnist_patch4_28": {"infer": 256, "train": 128}}
BUSY_SHARE_LIMIT = 0.15  # of all cores, used by other processes during a timed block


def make_step(model: torch.nn.Module, images: torch.Tensor, train: bool, bf16: bool, hf: bool) -> Callable[[], None]:
    """One inference call or one training step of ``model`` on ``images``."""
    labels = torch.randint(0, 10, (images.shape[0],)).to(images.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3) if train else None
    autocast = (lambda: torch.autocast(images.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    def logits() -> torch.Tensor:
        return model(images).logits if hf else model(images)

    def infer() -> None:
        with torch.inference_mode(), autocast():
            logits()

    def train_step() -> None:
        with autocast():
            loss = torch.nn.functional.cross_entropy(logits().float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.train(train)
    return train_step if train else infer


def flops_of(step: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


def matmul_rate(bf16: bool, seconds: float) -> float:
    """GFLOP/s of a 1024^3 matmul in this process (the peak used for MFU)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - start) / 1e9


def run_case(name: str, mode: str, bf16: bool, reps: int, warmup: int) -> dict:
    """Interleaved timing of ours and HF for one (model, mode, dtype) case."""
    torch.manual_seed(0)
    config = vit_config(name, num_classes=10, dropout=0.0)
    ours = ViT(config)
    hf = vit_to_hf(ours, attn_implementation="sdpa")
    # "tuned": what a dtype- and grad-aware fused/explicit choice in the core would pick (SDPA
    # except for bf16 training, where CPU SDPA's backward is slow)
    tuned = ViT(dataclasses.replace(config, fused_attn=not (mode == "train" and bf16)))
    tuned.load_state_dict(ours.state_dict())
    batch = MODELS[name][mode]
    images = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
    steps = {
        "attnlab": make_step(ours, images, mode == "train", bf16, hf=False),
        "attnlab_tuned": make_step(tuned, images, mode == "train", bf16, hf=False),
        "hf": make_step(hf, images, mode == "train", bf16, hf=True),
    }
    for _ in range(warmup):
        for step in steps.values():
            step()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(reps):
        for key, step in steps.items():  # A B A B ...
            wall, _, others = timed(step)
            samples[key].append((wall, others))
    return summarise(name, mode, bf16, batch, samples, flops_of(steps["attnlab"]))


def summarise(name: str, mode: str, bf16: bool, batch: int, samples: dict, flops: float) -> dict:
    result = {
        "model": name,
        "mode": mode,
        "dtype": "bf16" if bf16 else "fp32",
        "batch": batch,
        "gflop_per_step": flops / 1e9,
    }
    for key, values in samples.items():
        clean = [wall for wall, busy in values if busy < BUSY_SHARE_LIMIT]
        kept = clean if len(clean) >= max(3, len(values) // 2) else [wall for wall, _ in values]
        median = statistics.median(kept)
        result[key] = {
            "median_s": median,
            "min_s": min(kept),
            "images_per_s": batch / median,
            "gflops": flops / median / 1e9,
            "blocks_kept": len(kept),
            "blocks": len(values),
            "other_cpu_share": statistics.median(busy for _, busy in values),
        }
    result["ratio"] = result["hf"]["median_s"] / result["attnlab"]["median_s"]
    result["ratio_tuned"] = result["hf"]["median_s"] / result["attnlab_tuned"]["median_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions, for a smoke run")
    parser.add_argument("--reps", type=int, help="timed blocks per peer (5 with --quick, else 15)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "vision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps, warmup = (5, 2) if args.quick else (15, 3)
    reps = args.reps or reps
    peaks = {dtype: matmul_rate(dtype == "bf16", 0.5 if args.quick else 2.0) for dtype in ("fp32", "bf16")}
    results = []
    for name in MODELS:
        for mode in ("infer", "train"):
            for bf16 in (False, True):
                result = run_case(name, mode, bf16, reps, warmup)
                result["mfu"] = result["attnlab"]["gflops"] / peaks[result["dtype"]]
                results.append(result)
    print_table(results, peaks)
    report = {
        "threads": args.threads,
        "quick": args.quick,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
        "matmul_gflops": peaks,
        "results": results,
    }
    write_json_to(args.out, report)
    print(f"wrote {args.out}")


def print_table(results: list[dict], peaks: dict[str, float]) -> None:
    print(f"matmul 1024^3: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print("ratio = HF time / ours (>1: ours faster); other CPU = median share of all cores used by other processes")
    header = (
        f"{'model':<22}{'mode':<7}{'dtype':<6}{'batch':>6}{'ours img/s':>12}{'HF img/s':>11}{'ratio':>7}"
        f"{'tuned':>7}{'ours MFU':>10}{'kept':>7}{'other CPU':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        kept = f"{r['attnlab']['blocks_kept']}/{r['attnlab']['blocks']}"
        other = max(r[key]["other_cpu_share"] for key in ("attnlab", "attnlab_tuned", "hf"))
        print(
            f"{r['model']:<22}{r['mode']:<7}{r['dtype']:<6}{r['batch']:>6}{r['attnlab']['images_per_s']:>12.1f}"
            f"{r['hf']['images_per_s']:>11.1f}{r['ratio']:>7.2f}{r['ratio_tuned']:>7.2f}{r['mfu']:>10.0%}{kept:>7}{other:>11.0%}"
        )


if __name__ == "__main__":
    main()
