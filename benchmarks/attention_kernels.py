"""Which kernel should the fused path use? SDPA vs matmul-softmax-matmul, per length, dtype and grad mode.

The rule in ``attnlab.functional.attention._prefer_sdpa`` comes from this table: each cell runs
both kernels interleaved on the same (B, H, N, d) inputs and prints the ratio explicit / SDPA
of median times (> 1: SDPA is faster).

``--decoding`` times the attention of a decoding step instead (``CPU_PLAIN_MAX_QUERIES``): a few
queries per (batch, head), as when a sentence's beam hypotheses ask together, against the keys
cached so far; fp32, no gradients; masked (as beam lines are) from 2 queries on. It prints
``step_attention`` / SDPA (< 1: the plain products that ``step_attention`` takes are faster).

    python -m benchmarks.attention_kernels [--decoding]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
import torch.nn.functional as F

from attnlab.functional.attention import step_attention
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
            with autocast, contextlib.nullcontext() if backward else torch.no_grad():
                out = fn()
                if backward:
                    out.float().sum().backward()

        return run

    times, dropped = interleave({name: wrap(fn) for name, fn in kernels(q, k, v, causal).items()}, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["explicit"]["median_ms"] / stats["sdpa"]["median_ms"], dropped


def decoding_cell(batch: int, queries: int, keys: int, repeats: int, calls: int = 20):
    """step_attention against SDPA for (batch, 8 heads, queries, 64) against ``keys`` cached keys."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, queries, 8, 64, generator=g).transpose(1, 2)  # heads of a projection
    k, v = (torch.randn(batch, 8, keys, 64, generator=g) for _ in range(2))
    mask = None
    if queries > 1:  # each query sees a fifth of the keys, as a beam line of 5 does
        mask = torch.rand(batch, 1, queries, keys, generator=g) < 0.2
        mask[..., 0] = True

    def repeat(fn):
        def run():
            with torch.no_grad():
                for _ in range(calls):
                    fn(q, k, v, mask)

        return run

    def sdpa(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    times, dropped = interleave({"sdpa": repeat(sdpa), "step_attention": repeat(step_attention)}, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["step_attention"]["median_ms"] / stats["sdpa"]["median_ms"], dropped


def decoding(repeats: int, threads: int) -> None:
    rows = []
    print(
        f"step_attention / SDPA median time (< 1: step_attention faster); (B, 8 heads, queries, 64); {threads} threads"
    )
    for batch in (8, 32):
        for queries in (1, 2, 5, 10, 16, 32):
            line = []
            for keys in (32, 64, 128, 256, 320, 1024):
                stats, ratio, dropped = decoding_cell(batch, queries, keys, repeats)
                rows.append(
                    {
                        "B": batch,
                        "queries": queries,
                        "keys": keys,
                        "ratio": ratio,
                        "dropped_noisy": dropped,
                        "peers": stats,
                    }
                )
                line.append(f"{keys}:{ratio:5.2f}{'~' if dropped else ' '}")
            print(f"B={batch:<3} queries={queries:<3} " + " ".join(line), flush=True)
    data = {"threads": threads, "rows": rows}
    print(f"wrote {write_json('attention_kernels_decoding', data)}  (~: noisy blocks dropped)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128, 197, 256, 384, 512])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoding", action="store_true", help="a decoding step's few queries instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.decoding:
        return decoding(args.repeats, args.threads)
    rows = []
    print(f"explicit / sdpa median time (> 1: SDPA faster); {args.threads} threads")
    for shape in ((8, 8, 64), (16, 3, 64)):
        for dtype in ("fp32", "bf16"):
            for backward in (False, True):
                line = []
                for n in args.sizes:
                    stats, ratio, dropped = cell(shape, n, dtype, backward, False, args.repeats)
                    rows.append(
                        {
                            "B,H,d": shape,
                            "N": n,
                            "dtype": dtype,
                            "backward": backward,
                            "ratio": ratio,
                            "dropped_noisy": dropped,
                            "peers": stats,
                        }
                    )
                    line.append(f"{n}:{ratio:5.2f}{'~' if dropped else ' '}")
                mode = "fwd+bwd" if backward else "fwd"
                print(f"B,H,d={shape} {dtype} {mode:<7} " + " ".join(line), flush=True)
    print(
        f"wrote {write_json('attention_kernels', {'threads': args.threads, 'rows': rows})}  (~: noisy blocks dropped)"
    )


if __name__ == "__main__":
    main()
