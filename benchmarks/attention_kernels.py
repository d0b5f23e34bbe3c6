"""Which kernel should the fused path use? SDPA vs matmul-softmax-matmul, per length, dtype and grad mode.

The rule in ``attnlab.functional.attention._prefer_sdpa`` comes from this table: each cell runs
both kernels interleaved on the same (B, H, N, d) inputs and prints the ratio explicit / SDPA
of median times (> 1: SDPA is faster).

    python -m benchmarks.attention_kernels
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from benchmarks.common import interleave, summary, write_json


def kernels(q, k, v, causal: bool):
    n = q.shape[-2]
    mask = torch.ones(n, n, dtype=torch.bool).tril() if causal else None

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def explicit():
        s = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf"))
        return torch.softmax(s, -1) @ v

    return {"sdpa": sdpa, "explicit": explicit}


def cell(shape, n, dtype, backward, causal, repeats):
    b, h, d = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g, requires_grad=backward) for _ in range(3))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()

    def wrap(fn):
        def run():
            with autocast, (contextlib.nullcontext() if backward else torch.no_grad()):
                out = fn()
                if backward:
                    out.float().sum().backward()
        return run

    times, dropped = interleave({name: wrap(fn) for name, fn in kernels(q, k, v, causal).items()}, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["explicit"]["median_ms"] / stats["sdpa"]["median_ms"], dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128, 197, 256, 384, 512])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"explicit / sdpa median time (> 1: SDPA faster); {args.threads} threads")
    for shape in ((8, 8, 64), (16, 3, 64)):
        for dtype in ("fp32", "bf16"):
            for backward in (False, True):
                line = []
                for n in args.sizes:
                    stats, ratio, dropped = cell(shape, n, dtype, backward, False, args.repeats)
                    rows.append({"B,H,d": shape, "N": n, "dtype": dtype, "backward": backward, "ratio": ratio,
                                 "dropped_noisy": dropped, "peers": stats})
                    line.append(f"{n}:{ratio:5.2f}{'~' if dropped else ' '}")
                mode = "fwd+bwd" if backward else "fwd"
                print(f"B,H,d={shape} {dtype} {mode:<7} " + " ".join(line), flush=True)
    print(f"wrote {write_json('attention_kernels', {'threads': args.threads, 'rows': rows})}  (~: noisy blocks dropped)")


if __name__ == "__main__":
    main()
