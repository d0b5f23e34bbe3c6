"""bf16 against fp32 on CPU: training and decoding/inference, and where a bf16 step's time goes.

Per case, the fp32 and the bf16 call (``torch.autocast`` to bf16 over fp32 weights, as
``precision: bf16`` trains and decodes) run interleaved in one process after a warm-up; the table
gives medians and fp32 / bf16 (> 1: bf16 is faster). Then one call of each precision runs under a
dispatch mode that times every aten op and files it by kind (matmuls, attention, softmax, norms,
casts, element-wise, optimiser) and by the dtype of its first tensor input, which shows what
autocast leaves in fp32 and what it adds (casts), next to ``torch.profiler``'s top ops by self time.

Cases: the base Transformer (batch 8 x 32 tokens, vocab 8000: training step with Adam, greedy
decoding of 32 tokens through the decoding engine), ViT-S/16 at 224 (training step with SGD on 4
images, inference on 8) and the 28 x 28 patch-4 ViT (training on 128, inference on 256), the
steps of ``benchmarks.translation`` and ``benchmarks.vision``.

    python -m benchmarks.bf16 [--repeats 5] [--threads 2] [--only transformer-base-train ...]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from attnlab.decoding import greedy_search
from attnlab.functional.kernels import onednn
from attnlab.inference.engine import DecodingEngine
from attnlab.models.transformer import Transformer, TransformerConfig
from attnlab.models.vit import ViT, vit_config
from benchmarks.common import interleave, write_json
from benchmarks.translation import random_batch, training_step
from benchmarks.vision import make_step

Step = Callable[[], object]
TARGET = 1.6  # the bar: bf16 at least 1.6x fp32

KINDS = {  # aten op name fragments -> kind, first match wins
    "scaled_dot_product": "attention (SDPA)",
    "_softmax": "softmax",
    "layer_norm": "layer norm",
    "_to_copy": "casts",
    "copy_": "casts",
    "mm": "matmuls",
    "linear": "matmuls",
    "convolution": "matmuls",
    "_foreach": "optimiser",
    "_fused_adam": "optimiser",
    "gelu": "activations",
    "relu": "activations",
    "threshold_backward": "activations",
    "embedding": "embedding",
    "nll_loss": "loss",
    "log_softmax": "loss",
    "topk": "search",
    "sort": "search",
    "argmax": "search",
    "max": "search",
}


def transformer_train(preset: str) -> Callable[[bool], Step]:
    config = TransformerConfig.from_preset(preset, src_vocab_size=8000, tgt_vocab_size=8000)

    def make(bf16: bool) -> Step:
        torch.manual_seed(0)
        model = Transformer(config).train()
        src, tgt = random_batch(8, 32, 8000, 1), random_batch(8, 33, 8000, 2)
        return training_step(model, torch.optim.Adam(model.parameters(), lr=1e-4, fused=True), src, tgt, bf16)

    return make


def transformer_greedy(preset: str) -> Callable[[bool], Step]:
    config = TransformerConfig.from_preset(preset, src_vocab_size=8000, tgt_vocab_size=8000)

    def make(bf16: bool) -> Step:
        torch.manual_seed(0)
        engine = DecodingEngine(Transformer(config).eval())
        src = random_batch(8, 32, 8000, 3)

        @torch.no_grad()
        def run() -> object:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return greedy_search(engine, src, max_len_a=0.0, max_len_b=32, min_len=32).tokens

        return run

    return make


def vit(name: str, train: bool, batch: int) -> Callable[[bool], Step]:
    config = vit_config(name, num_classes=10, dropout=0.0)

    def make(bf16: bool) -> Step:
        torch.manual_seed(0)
        images = torch.randn(batch, config.in_channels, config.image_size, config.image_size)
        return make_step(ViT(config), images, train, bf16, hf=False)

    return make


CASES: dict[str, Callable[[bool], Step]] = {
    "transformer-base-train": transformer_train("base"),
    "transformer-base-greedy": transformer_greedy("base"),
    "vit-s16-train": vit("vit_small_patch16_224", True, 4),
    "vit-s16-infer": vit("vit_small_patch16_224", False, 8),
    "vit-mnist-train": vit("vit_mnist_patch4_28", True, 128),
    "vit-mnist-infer": vit("vit_mnist_patch4_28", False, 256),
}


class OpTimes(TorchDispatchMode):
    """Wall time of every aten op run under it, by (kind, dtype of the op's first tensor input)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func.overloadpacket)
        dtype = next((str(a.dtype).replace("torch.", "") for a in args if isinstance(a, torch.Tensor)), "-")
        self.seconds[(kind_of(name), dtype)] += time.perf_counter() - start
        return out


def kind_of(name: str) -> str:
    op = name.removeprefix("aten.")
    return next((kind for fragment, kind in KINDS.items() if fragment in op), "element-wise and other")


def op_breakdown(step: Step) -> dict[str, float]:
    """Seconds of one call of ``step`` by ``"kind (dtype)"``."""
    with OpTimes() as times:
        step()
    return {f"{kind} ({dtype})": s for (kind, dtype), s in sorted(times.seconds.items(), key=lambda kv: -kv[1])}


def top_ops(step: Step, count: int) -> list[tuple[str, float]]:
    """``torch.profiler``'s top ops of one call by self CPU time (ms)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / 1e3) for e in events[:count]]


def run_case(name: str, args) -> dict:
    steps = {"fp32": CASES[name](False), "bf16": CASES[name](True)}
    times, noisy = interleave(steps, repeats=args.repeats, warmup=1)
    medians = {k: statistics.median(v) for k, v in times.items()}
    row = {"case": name, "median_s": medians, "noisy_rounds": noisy, "speedup": medians["fp32"] / medians["bf16"]}
    print(
        f"| {name} | {1e3 * medians['fp32']:.0f} | {1e3 * medians['bf16']:.0f} | {row['speedup']:.2f} |"
        + (f" {noisy} noisy rounds" if noisy else ""),
        flush=True,
    )
    if row["speedup"] < TARGET or args.profile_all:
        row["ops"] = {k: op_breakdown(step) for k, step in steps.items()}
        row["profiler_top"] = {k: top_ops(step, 12) for k, step in steps.items()}
    return row


def print_profile(row: dict) -> None:
    print(f"\n{row['case']}: seconds of one call by op kind (dtype of the first input), timed op by op")
    for precision in ("fp32", "bf16"):
        ops = row["ops"][precision]
        total = sum(ops.values())
        parts = ", ".join(f"{k} {1e3 * s:.0f} ms ({s / total:.0%})" for k, s in list(ops.items())[:9])
        print(f"  {precision}: {1e3 * total:.0f} ms: {parts}")
    for precision in ("fp32", "bf16"):
        tops = ", ".join(f"{key} {ms:.0f}" for key, ms in row["profiler_top"][precision][:8])
        print(f"  profiler top self CPU ms, {precision}: {tops}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", choices=sorted(CASES), help="these cases only")
    parser.add_argument("--profile-all", action="store_true", help="profile every case, not only those below 1.6x")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, oneDNN bf16: {onednn.bf16_available()}")
    print("\n| case | fp32 ms | bf16 ms | fp32 / bf16 |\n|---|---|---|---|")
    rows = [run_case(name, args) for name in (args.only or CASES)]
    for row in rows:
        if "ops" in row:
            print_profile(row)
    print(f"\nwrote {write_json('bf16', {'config': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
