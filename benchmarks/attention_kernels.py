"""Which attention kernel should a call take? SDPA vs matmul-softmax-matmul, per length, dtype and grad mode.

The dispatcher (``attnlab.functional.kernels.choose_kernel``) decides by ``Thresholds``; this
measures where they lie on this machine. Each cell runs both kernels interleaved on the same
(B, H, N, d) inputs and prints the ratio explicit / SDPA of median times (> 1: SDPA is faster).

``--decoding`` times the attention of a decoding step instead: a few queries per (batch, head), as
when a sentence's beam hypotheses ask together, against the keys cached so far; fp32, no
gradients; masked (as beam lines are) from 2 queries on. It prints plain products / SDPA, both
through ``step_attention`` (< 1: the plain products of the step kernel are faster), and where the
fused step kernel runs, its time over the faster of the two (``f`` column, < 1: fused faster).

``--linear`` times fp32 linear products with their backward, the BLAS against oneDNN
(``attnlab.functional.kernels.linear``).

``--causal`` times fp32 causal self-attention, (8, 8, N, 64), forward and forward + backward:
the compiled causal blocks (``attnlab.functional.kernels.causal``) over SDPA's causal mode (< 1:
the blocks faster), where the blocks run.

``--write`` measures what the thresholds rest on (training cells with gradients in fp32, bf16 and
float64, bf16 cells without, decoding cells, linear products and, where the compiled kernels run,
thin products against oneDNN's packed ones and causal blocks against SDPA), derives them and
writes the table the dispatcher reads (``$ATTNLAB_KERNEL_TABLE``, else
``$XDG_CACHE_HOME/attnlab/attention_kernels.json``; ``--table`` overrides). Thresholds it does not
measure keep their defaults.

    python -m benchmarks.attention_kernels [--decoding | --linear | --causal | --write [--table PATH]]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F

from attnlab.functional.kernels import (
    Thresholds,
    causal,
    fused_step,
    set_thresholds,
    step_attention,
    table_path,
    thin,
    write_table,
)
from attnlab.functional.kernels.causal import blocks_available
from attnlab.functional.kernels.linear import linear
from benchmarks.common import interleave, summary, write_json
from benchmarks.thin_products import kernels as product_kernels

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}
PLAIN_ALWAYS = Thresholds(
    cpu_step_plain_max_queries=1 << 30, cpu_step_plain_max_keys=1 << 30, cpu_step_fused_max_keys=0
)
PLAIN_NEVER = Thresholds(cpu_step_plain_max_queries=1, cpu_step_fused_max_keys=0)
FUSED_ALWAYS = Thresholds(cpu_step_plain_max_queries=1 << 30, cpu_step_fused_max_keys=1 << 30)
# The thin kernel against oneDNN's packed products: rows of a decoding step, (in, out) of a base decoder.
THIN_ROWS, THIN_SHAPES = (1, 8, 16, 40, 64, 128, 256), ((512, 2048), (2048, 512))
# The linear product kernel's two paths, and the shapes it is timed on: (rows, in, out) of a base
# Transformer's feed-forward and a ViT-S/16 projection, forward and backward.
LINEAR_PATHS = {
    "blas": Thresholds(cpu_linear_onednn_min_rows=0),
    "onednn": Thresholds(cpu_linear_onednn_min_rows=1, cpu_linear_onednn_min_macs=0),
}
LINEAR_SHAPES = ((1024, 512, 2048), (1024, 2048, 512), (1576, 384, 1152))
CAUSAL_SIZES = (32, 48, 64, 128, 256, 512, 1024)


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
    """explicit / SDPA median time for (B, H, n, d) inputs; bf16 runs under CPU autocast, as training does."""
    b, h, d = shape
    g = torch.Generator().manual_seed(0)
    tensor_dtype = torch.float64 if dtype == "fp64" else torch.float32
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=tensor_dtype, requires_grad=backward) for _ in range(3))
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
    """step_attention's plain products against its SDPA for (batch, 8 heads, queries, 64) against ``keys`` keys."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, queries, 8, 64, generator=g).transpose(1, 2)  # heads of a projection
    k, v = (torch.randn(batch, 8, keys, 64, generator=g) for _ in range(2))
    mask = None
    if queries > 1:  # each query sees a fifth of the keys, as a beam line of 5 does
        mask = torch.rand(batch, 1, queries, keys, generator=g) < 0.2
        mask[..., 0] = True

    def repeat(thresholds: Thresholds):
        def run():
            previous = set_thresholds(thresholds)
            try:
                with torch.no_grad():
                    for _ in range(calls):
                        step_attention(q, k, v, mask)
            finally:
                set_thresholds(previous)

        return run

    sides = {"sdpa": repeat(PLAIN_NEVER), "plain": repeat(PLAIN_ALWAYS)}
    if fused_step.available():
        sides["fused"] = repeat(FUSED_ALWAYS)
    times, dropped = interleave(sides, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["plain"]["median_ms"] / stats["sdpa"]["median_ms"], dropped


def fused_ratio(stats: dict) -> float | None:
    """The fused kernel's time over the faster of SDPA and the plain products (< 1: fused faster)."""
    if "fused" not in stats:
        return None
    return stats["fused"]["median_ms"] / min(stats["sdpa"]["median_ms"], stats["plain"]["median_ms"])


def linear_cell(rows: int, features_in: int, features_out: int, repeats: int):
    """BLAS / oneDNN median time of one fp32 linear product with its backward (> 1: oneDNN faster)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, features_in, generator=g, requires_grad=True)
    w = torch.randn(features_out, features_in, generator=g, requires_grad=True)
    b = torch.randn(features_out, generator=g, requires_grad=True)

    def path(thresholds: Thresholds):
        def run():
            previous = set_thresholds(thresholds)
            try:
                torch.autograd.grad(linear(x, w, b).sum(), (x, w, b))
            finally:
                set_thresholds(previous)

        return run

    times, dropped = interleave({name: path(t) for name, t in LINEAR_PATHS.items()}, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["blas"]["median_ms"] / stats["onednn"]["median_ms"], dropped


def linear_products(repeats: int, threads: int) -> list[dict]:
    """The BLAS / oneDNN table of fp32 linear products (forward and backward): a line per shape."""
    rows = []
    print(f"fp32 linear, BLAS / oneDNN median time (> 1: oneDNN faster); {threads} threads")
    for shape in LINEAR_SHAPES:
        stats, ratio, dropped = linear_cell(*shape, repeats)
        rows.append({"rows,in,out": shape, "ratio": ratio, "dropped_noisy": dropped, "peers": stats})
        print(f"rows,in,out={shape} {ratio:5.2f}{'~' if dropped else ''}", flush=True)
    return rows


def linear_onednn_min_rows(rows: list[dict]) -> int:
    """1 (oneDNN) when it was at least 10% faster on every measured shape, else 0 (the BLAS)."""
    return int(all(r["ratio"] >= 1.1 for r in rows))


def training(sizes, shapes, dtypes, modes, repeats: int, threads: int) -> list[dict]:
    """The explicit / SDPA table: a printed line per (shape, dtype, mode), a row per cell."""
    rows = []
    print(f"explicit / sdpa median time (> 1: SDPA faster); {threads} threads")
    for shape in shapes:
        for dtype in dtypes:
            for backward in modes:
                line = []
                for n in sizes:
                    stats, ratio, dropped = cell(shape, n, dtype, backward, False, repeats)
                    row = {"B,H,d": shape, "N": n, "dtype": dtype, "backward": backward, "ratio": ratio}
                    rows.append({**row, "dropped_noisy": dropped, "peers": stats})
                    line.append(f"{n}:{ratio:5.2f}{'~' if dropped else ' '}")
                mode = "fwd+bwd" if backward else "fwd"
                print(f"B,H,d={shape} {dtype} {mode:<7} " + " ".join(line), flush=True)
    return rows


def decoding(batches, queries_list, keys_list, repeats: int, threads: int) -> list[dict]:
    """The plain / SDPA table of decoding steps: a printed line per (batch, queries), a row per cell."""
    rows = []
    print(
        "plain products / SDPA median time (< 1: plain faster), f: fused / the faster of them; "
        f"(B, 8 heads, queries, 64); {threads} threads"
    )
    for batch in batches:
        for queries in queries_list:
            line = []
            for keys in keys_list:
                stats, ratio, dropped = decoding_cell(batch, queries, keys, repeats)
                fused = fused_ratio(stats)
                rows.append(
                    {
                        "B": batch,
                        "queries": queries,
                        "keys": keys,
                        "ratio": ratio,
                        "fused_ratio": fused,
                        "dropped_noisy": dropped,
                        "peers": stats,
                    }
                )
                line.append(f"{keys}:{ratio:5.2f}{'' if fused is None else f' f{fused:4.2f}'}{'~' if dropped else ' '}")
            print(f"B={batch:<3} queries={queries:<3} " + " ".join(line), flush=True)
    return rows


def sdpa_min_keys(rows: list[dict], dtype: str, backward: bool = True) -> int:
    """The fewest keys from which SDPA won every measured cell of ``dtype`` (backward, or forward
    only) at that length and above."""
    cells = [r for r in rows if r["dtype"] == dtype and r["backward"] == backward]
    sizes = sorted({r["N"] for r in cells})
    losing = [r["N"] for r in cells if r["ratio"] < 1.0]
    if not losing:
        return 0
    above = [n for n in sizes if n > max(losing)]
    return above[0] if above else max(sizes) + 1


def plain_step_limits(rows: list[dict]) -> tuple[int, int]:
    """(max queries, max keys): the largest rectangle of decoding cells (2+ queries) that plain products all won."""
    cells = [r for r in rows if r["queries"] > 1]
    best, best_area = (1, 0), 0
    for max_queries in sorted({r["queries"] for r in cells}):
        inside = [r for r in cells if r["queries"] <= max_queries]
        losing = [r["keys"] for r in inside if r["ratio"] >= 1.0]
        winning_keys = [r["keys"] for r in inside if not losing or r["keys"] < min(losing)]
        if winning_keys and max_queries * max(winning_keys) > best_area:
            best, best_area = (max_queries, max(winning_keys)), max_queries * max(winning_keys)
    return best


def won_up_to(cells: list[tuple[int, bool]]) -> int:
    """The largest size below every losing cell's, from (size, won) cells (0: none won first)."""
    losing = [size for size, won in cells if not won]
    return max((size for size, _ in cells if not losing or size < min(losing)), default=0)


def step_fused_max_keys(rows: list[dict], max_queries: int) -> int:
    """The most keys up to which the fused kernel won every decoding cell of at most
    ``max_queries`` queries (0: it lost at the fewest keys, or does not run here)."""
    cells = [r for r in rows if r["queries"] <= max_queries and r.get("fused_ratio") is not None]
    return won_up_to([(r["keys"], r["fused_ratio"] < 1.0) for r in cells])


def thin_products(repeats: int, threads: int) -> list[dict]:
    """oneDNN packed / thin median time of a decoding step's products (> 1: thin faster), weights
    streamed from memory; nothing where the thin kernel does not run."""
    if not thin.available():
        return []
    rows = []
    print(f"oneDNN packed / thin median time (> 1: thin faster); {threads} threads")
    with torch.inference_mode():
        for n_in, n_out in THIN_SHAPES:
            copies = max(2, round(50e6 / (4 * n_in * n_out)))
            weights = [torch.randn(n_out, n_in) for _ in range(copies)]
            bias, line = torch.randn(n_out), []
            for count in THIN_ROWS:
                peers = product_kernels(torch.randn(count, n_in), weights, bias)
                times, dropped = interleave({name: peers[name] for name in ("oneDNN packed", "thin")}, repeats)
                stats = {name: summary(t) for name, t in times.items()}
                ratio = stats["oneDNN packed"]["median_ms"] / stats["thin"]["median_ms"]
                rows.append({"rows": count, "in,out": (n_in, n_out), "ratio": ratio, "dropped_noisy": dropped})
                line.append(f"{count}:{ratio:5.2f}{'~' if dropped else ' '}")
            print(f"in,out={(n_in, n_out)} " + " ".join(line), flush=True)
    return rows


def thin_max_rows(rows: list[dict]) -> int:
    """The most rows up to which the thin kernel won every measured shape (0: none, or no kernel)."""
    return won_up_to([(r["rows"], r["ratio"] >= 1.0) for r in rows])


def causal_cell(n: int, backward: bool, repeats: int) -> tuple[dict, float, int]:
    """Compiled causal blocks / SDPA causal median time for fp32 (8, 8, n, 64) self-attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 8, n, 64, generator=g, requires_grad=backward) for _ in range(3))
    calls = {
        "sdpa causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "blocks": lambda: causal(q, k, v, is_causal=True)[0],
    }

    def wrap(fn):
        def run():
            with contextlib.nullcontext() if backward else torch.no_grad():
                out = fn()
                if backward:
                    out.sum().backward()

        return run

    times, dropped = interleave({name: wrap(fn) for name, fn in calls.items()}, repeats)
    stats = {name: summary(t) for name, t in times.items()}
    return stats, stats["blocks"]["median_ms"] / stats["sdpa causal"]["median_ms"], dropped


def causal_blocks(repeats: int, threads: int) -> list[dict]:
    """The blocks / SDPA causal table: a printed line per mode, a row per cell; nothing where the
    blocks do not run."""
    if not blocks_available():
        return []
    rows = []
    print(f"compiled causal blocks / SDPA causal median time (< 1: blocks faster); (8, 8, N, 64); {threads} threads")
    for backward in (False, True):
        line = []
        for n in CAUSAL_SIZES:
            stats, ratio, dropped = causal_cell(n, backward, repeats)
            rows.append({"N": n, "backward": backward, "ratio": ratio, "dropped_noisy": dropped, "peers": stats})
            line.append(f"{n}:{ratio:5.2f}{'~' if dropped else ' '}")
        print(f"{'fwd+bwd' if backward else 'fwd':<7} " + " ".join(line), flush=True)
    return rows


def causal_min_queries(rows: list[dict]) -> int:
    """The fewest queries from which the blocks won every measured cell at that length and above
    (0: they lost at the longest, or do not run here)."""
    if not rows:
        return 0
    sizes = sorted({r["N"] for r in rows})
    losing = [r["N"] for r in rows if r["ratio"] >= 1.0]
    above = [n for n in sizes if not losing or n > max(losing)]
    return above[0] if above else 0


def write(args) -> None:
    """Measure, derive the thresholds, write the table and print it."""
    train_rows = training(args.sizes, [(8, 8, 64)], list(DTYPES), [True], args.repeats, args.threads)
    forward_rows = training(args.sizes, [(8, 8, 64)], ["bf16"], [False], args.repeats, args.threads)
    step_rows = decoding([8, 32], [1, 2, 4, 8, 16], [32, 64, 128, 256, 512, 1024], args.repeats, args.threads)
    linear_rows = linear_products(args.repeats, args.threads)
    thin_rows = thin_products(args.repeats, args.threads)
    causal_rows = causal_blocks(args.repeats, args.threads)
    max_queries, max_keys = plain_step_limits(step_rows)
    thresholds = dataclasses.replace(
        Thresholds(),
        cpu_backward_sdpa_min_keys_float32=sdpa_min_keys(train_rows, "fp32"),
        cpu_backward_sdpa_min_keys_bfloat16=sdpa_min_keys(train_rows, "bf16"),
        cpu_backward_sdpa_min_keys_float64=sdpa_min_keys(train_rows, "fp64"),
        cpu_forward_sdpa_min_keys_bfloat16=sdpa_min_keys(forward_rows, "bf16", backward=False),
        cpu_step_plain_max_queries=max_queries,
        cpu_step_plain_max_keys=max_keys,
        cpu_linear_onednn_min_rows=linear_onednn_min_rows(linear_rows),
        cpu_thin_max_rows=thin_max_rows(thin_rows),
        cpu_step_fused_max_keys=step_fused_max_keys(step_rows, max_queries),
        cpu_causal_min_queries=causal_min_queries(causal_rows),
    )
    summaries = {
        "threads": args.threads,
        "repeats": args.repeats,
        "training": [{k: r[k] for k in ("dtype", "N", "ratio")} for r in train_rows],
        "forward_bf16": [{k: r[k] for k in ("N", "ratio")} for r in forward_rows],
        "decoding": [{k: r[k] for k in ("B", "queries", "keys", "ratio", "fused_ratio")} for r in step_rows],
        "linear": [{k: r[k] for k in ("rows,in,out", "ratio")} for r in linear_rows],
        "thin": [{k: r[k] for k in ("rows", "in,out", "ratio")} for r in thin_rows],
        "causal": [{k: r[k] for k in ("N", "backward", "ratio")} for r in causal_rows],
    }
    path = write_table(thresholds, args.table, measured=summaries)
    print(f"wrote {path}:")
    for field in dataclasses.fields(thresholds):
        print(f"  {field.name} = {getattr(thresholds, field.name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 128, 197, 256, 384, 512])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoding", action="store_true", help="a decoding step's few queries instead")
    parser.add_argument("--linear", action="store_true", help="fp32 linear products, BLAS against oneDNN")
    parser.add_argument("--causal", action="store_true", help="compiled causal blocks against SDPA's causal mode")
    parser.add_argument("--write", action="store_true", help="derive the thresholds and write the dispatcher's table")
    parser.add_argument("--table", type=Path, default=None, help=f"where --write writes (default {table_path()})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.write:
        return write(args)
    if args.linear:
        rows = linear_products(args.repeats, args.threads)
        path = write_json("linear_products", {"threads": args.threads, "rows": rows})
    elif args.causal:
        rows = causal_blocks(args.repeats, args.threads)
        path = write_json("attention_kernels_causal", {"threads": args.threads, "rows": rows})
    elif args.decoding:
        rows = decoding([8, 32], [1, 2, 5, 10, 16, 32], [32, 64, 128, 256, 320, 1024], args.repeats, args.threads)
        path = write_json("attention_kernels_decoding", {"threads": args.threads, "rows": rows})
    else:
        rows = training(
            args.sizes, [(8, 8, 64), (16, 3, 64)], ["fp32", "bf16"], [False, True], args.repeats, args.threads
        )
        path = write_json("attention_kernels", {"threads": args.threads, "rows": rows})
    print(f"wrote {path}  (~: noisy blocks dropped)")


if __name__ == "__main__":
    main()
