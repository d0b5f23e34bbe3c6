"""Multi-head attention, side by side on CPU: attnlab vs torch.nn.MultiheadAttention vs bare SDPA vs explicit.

Every peer is a whole self-attention layer with the same weights (E = H * d, projections
included), so the numbers compare what a model pays. Peers run interleaved in one process;
the table gives medians and the ratio of torch's median to ours (> 1: we are faster). Peak
memory is the max RSS of each case run alone in a fresh interpreter, above its set-up.

    python -m benchmarks.attention            # B=8 H=8 d=64, N in 128..2048 (several minutes)
    python -m benchmarks.attention --quick    # N in 128, 512
"""

from __future__ import annotations

import argparse
import contextlib
import platform

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from attnlab import MultiHeadAttention
from attnlab.functional import kernels
from benchmarks.common import interleave, matmul_gflops, peak_rss_mib, peak_rss_of, reset_peak_rss, summary, write_json

PEERS = ("attnlab", "torch", "sdpa", "explicit", "causal-kernel", "attnlab+weights", "torch+weights")


class BareAttention(nn.Module):
    """Projections around one attention kernel: F.scaled_dot_product_attention, softmax(QK^T)V, or
    attnlab's causal kernel (which hands non-causal calls to SDPA)."""

    def __init__(self, ref: nn.MultiheadAttention, kernel: str) -> None:
        super().__init__()
        self.ref, self.kernel, self.h = ref, kernel, ref.num_heads

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, e = x.shape
        qkv = F.linear(x, self.ref.in_proj_weight, self.ref.in_proj_bias)  # (B, N, 3E)
        q, k, v = qkv.view(b, n, 3, self.h, e // self.h).permute(2, 0, 3, 1, 4)  # (B, H, N, d) each
        if self.kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        elif self.kernel == "causal-kernel":
            out = kernels.causal(q, k, v, is_causal=causal)[0]
        else:
            s = q @ k.transpose(-2, -1) * (e // self.h) ** -0.5  # (B, H, N, N)
            if causal:
                s = s.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
            out = s.softmax(-1) @ v
        return self.ref.out_proj(out.transpose(1, 2).reshape(b, n, e))


def make_case(
    peer: str, n: int, causal: bool, backward: bool, batch: int, heads: int, head_dim: int, device: str = "cpu"
):
    """A closure running one call of the peer (forward, or forward + backward)."""
    torch.manual_seed(0)
    e = heads * head_dim
    ref = nn.MultiheadAttention(e, heads, batch_first=True, device=device)
    ours = MultiHeadAttention.from_torch(ref)
    x = torch.randn(batch, n, e, requires_grad=backward, device=device)
    mask = torch.ones(n, n, dtype=torch.bool, device=device).triu(1) if causal else None
    weights = peer.endswith("+weights")
    if peer.startswith("attnlab"):
        module, call = ours, lambda: ours(x, x, x, is_causal=causal, need_weights=weights)[0]
    elif peer.startswith("torch"):
        module, call = ref, lambda: ref(x, x, x, attn_mask=mask, is_causal=causal, need_weights=weights)[0]
    else:
        bare = BareAttention(ref, peer)
        module, call = bare, lambda: bare(x, causal)
    module.train(backward)

    def run():
        with contextlib.nullcontext() if backward else torch.no_grad():
            out = call()
            if backward:
                out.sum().backward()

    return run


def flops_of(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def memory_case(argv: list[str]) -> None:
    """Child process: set up one case, run it once, print the peak RSS above the set-up (MiB)."""
    peer, n, causal, backward, batch, heads, head_dim, threads = argv
    torch.set_num_threads(int(threads))
    run = make_case(peer, int(n), causal == "1", backward == "1", int(batch), int(heads), int(head_dim))
    base = reset_peak_rss()
    run()
    print(peak_rss_mib() - base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N in 128 and 512 only, fewer repeats")
    parser.add_argument("--sizes", type=int, nargs="*", help="sequence lengths N")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-case", nargs=8, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        return memory_case(args.memory_case)

    torch.set_num_threads(args.threads)
    sizes = args.sizes or ([128, 512] if args.quick else [128, 512, 1024, 2048])
    rate = matmul_gflops()
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, fp32; "
        f"B={args.batch} H={args.heads} d={args.head_dim}; large matmul {rate:.0f} GFLOP/s"
    )
    rows = []
    for n in sizes:
        for backward in (False, True):
            for causal in (False, True):
                rows.append(measure_cell(n, causal, backward, args, rate))
    print_causal_savings(rows)
    write = write_json("attention", {"matmul_gflops": rate, "config": vars(args), "rows": rows})
    print(f"\nwrote {write}")


def measure_cell(n: int, causal: bool, backward: bool, args, rate: float) -> dict:
    dims = (args.batch, args.heads, args.head_dim)
    runs = {peer: make_case(peer, n, causal, backward, *dims) for peer in PEERS}
    repeats = max(2, args.repeats if n <= 512 else args.repeats // 2)
    times, dropped = interleave(runs, repeats=2 if args.quick and n > 512 else repeats)
    stats = {peer: summary(t) for peer, t in times.items()}
    flops = flops_of(runs["attnlab"])
    row = {"N": n, "causal": causal, "mode": "fwd+bwd" if backward else "fwd", "dropped_noisy": dropped, "peers": stats}
    row["attnlab_gflops"] = flops / (stats["attnlab"]["median_ms"] / 1e3) / 1e9
    row["attnlab_mfu"] = row["attnlab_gflops"] / rate
    if not args.no_memory and not causal:
        flags = [str(n), "0", "1" if backward else "0", *map(str, dims), str(args.threads)]
        row["peak_mib"] = {peer: peak_rss_of("benchmarks.attention", [peer, *flags]) for peer in PEERS}
    print_row(row)
    return row


def causal_savings(rows: list[dict]) -> list[dict]:
    """Each peer's causal median over its non-causal median, per N and mode (issue 17 asks <= 0.6
    of attnlab's from N = 1024 on)."""
    full = {(r["N"], r["mode"]): r["peers"] for r in rows if not r["causal"]}
    savings = []
    for row in rows:
        if row["causal"] and (row["N"], row["mode"]) in full:
            base = full[row["N"], row["mode"]]
            peers = ("attnlab", "torch", "sdpa")
            ratios = {peer: row["peers"][peer]["median_ms"] / base[peer]["median_ms"] for peer in peers}
            savings.append({"N": row["N"], "mode": row["mode"], "causal_over_full": ratios})
    return savings


def print_causal_savings(rows: list[dict]) -> None:
    print("\ncausal / non-causal median time, each peer against itself (< 1: causal saves)")
    for saving in causal_savings(rows):
        ratios = "  ".join(f"{peer} {r:.2f}" for peer, r in saving["causal_over_full"].items())
        print(f"N={saving['N']:<5} {saving['mode']:<7} {ratios}", flush=True)


def print_row(row: dict) -> None:
    p = {k: v["median_ms"] for k, v in row["peers"].items()}
    best_kernel = min(p["sdpa"], p["explicit"])
    head = f"N={row['N']:<5} {'causal' if row['causal'] else 'full':<6} {row['mode']:<7}"
    print(
        f"{head} attnlab {p['attnlab']:8.1f} ms | torch {p['torch']:8.1f} (x{p['torch'] / p['attnlab']:.2f}) | "
        f"sdpa {p['sdpa']:8.1f} explicit {p['explicit']:8.1f} (best/ours x{best_kernel / p['attnlab']:.2f}) | "
        f"weights: attnlab {p['attnlab+weights']:8.1f} torch {p['torch+weights']:8.1f} "
        f"(x{p['torch+weights'] / p['attnlab+weights']:.2f}) | MFU {row['attnlab_mfu']:.0%}"
        + (f" | dropped {row['dropped_noisy']}" if row["dropped_noisy"] else ""),
        flush=True,
    )
    if row["causal"]:
        print(
            f"{'':21}causal kernel {p['causal-kernel']:8.1f} ms (x{p['causal-kernel'] / p['sdpa']:.2f} of SDPA causal)"
        )
    if "peak_mib" in row:
        mem = " ".join(f"{k} {v:.0f}" for k, v in row["peak_mib"].items())
        print(f"{'':21}peak MiB above set-up: {mem}", flush=True)


if __name__ == "__main__":
    main()
