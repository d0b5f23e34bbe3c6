"""Where causal attention's time goes on CPU: the flash kernel by piece shape, and causal vs full.

Two tables, kernels alone (no projections), fp32, (B, H, d) = (8, 8, 64), interleaved in one process:

1. PyTorch's CPU flash kernel (``_scaled_dot_product_flash_attention_for_cpu``) on one piece of
   ``Lq x Lk`` scores: nanoseconds per score, full and with its own causal flag (square pieces).
   The kernel walks the keys in blocks of 512 and computes every block it enters in full, so its
   causal flag saves nothing on a piece of 512 keys or fewer.
2. Causal self-attention over N tokens, time / SDPA non-causal: SDPA's causal mode and
   attnlab's ``kernels.causal`` (its compiled blocks where they run, else the lower triangle
   tiled by halving), forward and forward + backward. Issue 17 asks for <= 0.6.

    python -m benchmarks.causal_pieces                      # N in 1024, 2048, 4096 (~10 CPU-minutes)
    python -m benchmarks.causal_pieces --sizes 1024 --repeats 2
"""

from __future__ import annotations

import argparse
import platform

import torch
import torch.nn.functional as F

from attnlab.functional import kernels
from attnlab.functional.kernels.causal import blocks_available
from benchmarks.common import interleave, summary, write_json

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
PIECES = ((1024, 1024), (512, 512), (256, 256), (128, 128), (128, 1024), (1024, 128))


def piece_table(batch: int, heads: int, head_dim: int, repeats: int) -> list[dict]:
    """ns per score of one flash call per piece shape; ``causal_over_full`` for square pieces."""
    rows = []
    for lq, lk in PIECES:
        qkv = (torch.randn(batch, heads, lq, head_dim), *torch.randn(2, batch, heads, lk, head_dim).unbind(0))
        sides = {"full": lambda qkv=qkv: FLASH(*qkv, 0.0, False)}
        if lq == lk:
            sides["causal"] = lambda qkv=qkv: FLASH(*qkv, 0.0, True)
        times, _ = interleave(sides, repeats=repeats)
        best = {name: summary(t)["min_ms"] for name, t in times.items()}
        row = {"Lq": lq, "Lk": lk, "ns_per_score": best["full"] * 1e6 / (batch * heads * lq * lk)}
        if "causal" in best:
            row["causal_over_full"] = best["causal"] / best["full"]
        rows.append(row)
        causal = f"  causal/full {row['causal_over_full']:.2f}" if "causal_over_full" in row else ""
        print(f"piece {lq:>4} x {lk:<4}  {row['ns_per_score']:.2f} ns/score{causal}", flush=True)
    return rows


def causal_row(n: int, backward: bool, batch: int, heads: int, head_dim: int, repeats: int) -> dict:
    """Each causal side's time over SDPA non-causal at length ``n``."""
    q, k, v = (torch.randn(batch, heads, n, head_dim, requires_grad=backward) for _ in range(3))
    calls = {
        "sdpa full": lambda: F.scaled_dot_product_attention(q, k, v),
        "sdpa causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "attnlab causal": lambda: kernels.causal(q, k, v, is_causal=True)[0],
    }

    def step(call):
        def run():
            out = call()
            if backward:
                out.sum().backward()

        return run

    times, dropped = interleave({name: step(call) for name, call in calls.items()}, repeats=repeats)
    best = {name: summary(t)["min_ms"] for name, t in times.items()}
    row = {"N": n, "mode": "fwd+bwd" if backward else "fwd", "full_ms": best["sdpa full"], "dropped_noisy": dropped}
    row["over_full"] = {name: ms / best["sdpa full"] for name, ms in best.items() if name != "sdpa full"}
    ratios = "  ".join(f"{name} {r:.2f}" for name, r in row["over_full"].items())
    print(f"N={n:<5} {row['mode']:<7} full {row['full_ms']:8.1f} ms  {ratios}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dims = (args.batch, args.heads, args.head_dim)
    way = "compiled blocks" if blocks_available() else "halving"
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, fp32")
    print(f"attnlab causal: {way}")
    pieces = piece_table(*dims, repeats=args.repeats + 2)
    rows = [causal_row(n, backward, *dims, args.repeats) for n in args.sizes for backward in (False, True)]
    print(f"\nwrote {write_json('causal_pieces', {'config': vars(args), 'pieces': pieces, 'causal': rows})}")


if __name__ == "__main__":
    main()
