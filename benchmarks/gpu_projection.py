"""Training throughput on 1-8 GPUs under ``torchrun``, projected from counted FLOPs and stated assumptions.

Nothing here runs on a GPU. Per model, the FLOPs of one training step (forward, loss, backward)
are counted by ``torch.utils.flop_counter`` on the CPU at a small batch and scaled to the per-GPU
batch (every op of both models is per sample, so the count is linear in the batch; the script
checks that on two batch sizes); the kernels of a step are counted as its aten ops that are not
views or allocations (on the CPU, where this project's dropout takes five ops that are one
kernel on CUDA: an overestimate). The optimiser's few FLOPs and kernels are left out. Then,
for n GPUs each with the same batch (data parallel, as ``attnlab train`` under torchrun):

    compute   = max(step FLOPs / (peak * MFU), kernels * host time per kernel)  (eager PyTorch
                      enqueues one kernel per non-view aten op; the host's Python, dispatch and
                      launch per kernel, 30 us as measured for attnlab's base step on an H100)
    all-reduce = 2 (n - 1) / n * gradient bytes / bus bandwidth          (ring all-reduce)
    step      = compute + all-reduce                                      (no overlap)
              = compute + max(last bucket, all-reduce - backward time)     (overlap: DDP's buckets
                                                                           reduce while backward runs;
                                                                           backward = 2/3 of compute)

The gradient bytes are the parameter count times 4: DDP reduces the fp32 gradients of fp32
parameters, also under bf16 autocast. Every assumption is an argument, printed with the table.

    python -m benchmarks.gpu_projection
    python -m benchmarks.gpu_projection --peak-tflops 989 --mfu 0.35 --bus-gbs 360 24
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.models.vit import ViT, vit_config
from benchmarks.common import write_json

BUCKET_MIB = 25  # DistributedDataParallel's default bucket_cap_mb
BACKWARD_SHARE = 2 / 3  # backward costs about twice the forward


def transformer_step(batch: int, src_len: int, tgt_len: int, vocab: int) -> tuple[nn.Module, Callable[[], None]]:
    """The base Transformer (Vaswani et al., 2017) and one training step on a random batch of pairs."""
    torch.manual_seed(0)
    model = Transformer(TransformerConfig.from_preset("base", src_vocab_size=vocab, tgt_vocab_size=vocab)).train()
    src = torch.randint(4, vocab, (batch, src_len))  # no padding: every token counts
    tgt = torch.randint(4, vocab, (batch, tgt_len + 1))

    def step() -> None:
        logits = model(src, tgt[:, :-1])  # (B, T, V)
        F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten()).backward()

    return model, step


def vit_step(batch: int) -> tuple[nn.Module, Callable[[], None]]:
    """ViT-S/16 at 224 x 224, 1000 classes, and one training step on random images."""
    torch.manual_seed(0)
    model = ViT(vit_config("vit_small_patch16_224")).train()
    images, labels = torch.randn(batch, 3, 224, 224), torch.randint(0, 1000, (batch,))

    def step() -> None:
        F.cross_entropy(model(images), labels).backward()

    return model, step


def counted_flops(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


class KernelCount(TorchDispatchMode):
    """Counts the aten ops that launch a kernel on a GPU: not views, not allocations, not ``.item()``."""

    NO_KERNEL = frozenset({"aten.empty", "aten._local_scalar_dense", "aten.new_empty_strided"})

    def __init__(self) -> None:
        super().__init__()
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view and str(func.overloadpacket) not in self.NO_KERNEL:
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def counted_kernels(step: Callable[[], None]) -> int:
    with KernelCount() as count:
        step()
    return count.kernels


def per_sample_flops(make: Callable[[int], tuple[nn.Module, Callable[[], None]]]) -> tuple[float, int, int]:
    """FLOPs of one training step per sample (counted at batch 1 and 2, checked linear), the
    parameters, and the kernels of one step (any batch)."""
    model, one = make(1)
    two = counted_flops(make(2)[1])
    flops = counted_flops(one)
    if two != 2 * flops:
        raise RuntimeError(f"the step's FLOPs are not linear in the batch: {flops} at 1, {two} at 2")
    model.zero_grad(set_to_none=True)  # a first step's backward: no gradients to accumulate into
    return float(flops), sum(p.numel() for p in model.parameters()), counted_kernels(one)


def project(step_flops: float, params: int, kernels: int, gpus: int, bus_gbs: float, launch_us: float, args) -> dict:
    """Seconds per step and throughput of ``gpus`` data-parallel GPUs, without and with overlap."""
    math_time = step_flops / (args.peak_tflops * 1e12 * args.mfu)
    launch_time = kernels * launch_us * 1e-6
    compute = max(math_time, launch_time)
    grad_bytes = 4 * params
    share = 2 * (gpus - 1) / gpus
    reduce = share * grad_bytes / (bus_gbs * 1e9)
    last_bucket = share * min(grad_bytes, BUCKET_MIB * (1 << 20)) / (bus_gbs * 1e9)
    exposed = max(last_bucket, reduce - BACKWARD_SHARE * compute) if gpus > 1 else 0.0
    return {
        "gpus": gpus,
        "math_ms": 1e3 * math_time,
        "launch_ms": 1e3 * launch_time,
        "compute_ms": 1e3 * compute,
        "all_reduce_ms": 1e3 * reduce,
        "step_ms_no_overlap": 1e3 * (compute + reduce),
        "step_ms_overlap": 1e3 * (compute + exposed),
        "efficiency_no_overlap": compute / (compute + reduce),
        "efficiency_overlap": compute / (compute + exposed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200 SXM)")
    parser.add_argument("--mfu", type=float, default=0.35, help="share of the peak a training step reaches")
    parser.add_argument("--bus-gbs", type=float, nargs="+", default=[360.0, 24.0], help="all-reduce bus GB/s")
    parser.add_argument(
        "--launch-us",
        type=float,
        nargs="+",
        default=[30.0, 5.0],
        help="host time per kernel: eager attnlab as measured on an H100 (docs/results/translation.md), a lean loop",
    )
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--mt-batch", type=int, default=128, help="sentence pairs per GPU per step")
    parser.add_argument("--mt-lengths", type=int, nargs=2, default=[25, 25], help="source and target tokens")
    parser.add_argument("--mt-vocab", type=int, default=32000)
    parser.add_argument("--vit-batch", type=int, default=128, help="images per GPU per step")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    src_len, tgt_len = args.mt_lengths
    models = {
        "Transformer base": (
            lambda b: transformer_step(b, src_len, tgt_len, args.mt_vocab),
            args.mt_batch,
            args.mt_batch * tgt_len,
            "target tokens",
        ),
        "ViT-S/16": (vit_step, args.vit_batch, args.vit_batch, "images"),
    }
    print(
        f"assumed: {args.peak_tflops:g} TFLOP/s bf16 dense peak per GPU, MFU {args.mfu:.0%}, ring all-reduce of "
        f"fp32 gradients at {' or '.join(f'{b:g}' for b in args.bus_gbs)} GB/s bus bandwidth, DDP buckets of "
        f"{BUCKET_MIB} MiB, backward = {BACKWARD_SHARE:.2f} of a step's compute, "
        f"{' or '.join(f'{u:g}' for u in args.launch_us)} us of host time per kernel"
    )
    rows = []
    for name, (make, batch, units, unit_name) in models.items():
        flops, params, kernels = per_sample_flops(make)
        step_flops = flops * batch
        print(
            f"\n{name}: {params / 1e6:.1f} M parameters ({4 * params / 2**20:.0f} MiB of fp32 gradients), "
            f"{flops / 1e9:.1f} GFLOP per sample per training step (counted), batch {batch} per GPU = "
            f"{step_flops / 1e12:.2f} TFLOP per GPU per step; {kernels} kernels per step"
        )
        print(
            "| host us/kernel | bus GB/s | GPUs | math / host ms | all-reduce ms | step ms (no overlap / overlap) | "
            f"{unit_name}/s (no overlap / overlap) | scaling efficiency |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for launch_us, bus, gpus in itertools.product(args.launch_us, args.bus_gbs, args.gpus):
            row = project(step_flops, params, kernels, gpus, bus, launch_us, args)
            row.update(model=name, bus_gbs=bus, launch_us=launch_us, params=params, step_flops=step_flops)
            row.update(kernels=kernels, units_per_step=units)
            row["throughput_no_overlap"] = gpus * units / (row["step_ms_no_overlap"] / 1e3)
            row["throughput_overlap"] = gpus * units / (row["step_ms_overlap"] / 1e3)
            rows.append(row)
            print_row(row)
    path = write_json("gpu_projection", {"assumptions": vars(args), "bucket_mib": BUCKET_MIB, "rows": rows})
    print(f"\nwrote {path}")


def print_row(row: dict) -> None:
    print(
        f"| {row['launch_us']:g} | {row['bus_gbs']:g} | {row['gpus']} | "
        f"{row['math_ms']:.1f} / {row['launch_ms']:.1f} | "
        f"{row['all_reduce_ms']:.1f} | "
        f"{row['step_ms_no_overlap']:.1f} / {row['step_ms_overlap']:.1f} | "
        f"{row['throughput_no_overlap']:,.0f} / {row['throughput_overlap']:,.0f} | "
        f"{row['efficiency_no_overlap']:.0%} / {row['efficiency_overlap']:.0%} |"
    )


if __name__ == "__main__":
    main()
