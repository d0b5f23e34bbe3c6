"""The thin products of a decoding step: ``F.linear`` against packed copies of the weight.

A decoding step multiplies 8 rows (greedy, batch 8) or 40 (beam 5) by each weight matrix of a
base-size decoder. Each kernel runs over enough copies of the weight (about 100 MB) that they
stream from memory, as the decoder's weights do in a real step, instead of sitting in cache:

- ``F.linear``: what PyTorch calls for ``nn.Linear`` (the BLAS repacks the weight every call);
- ``oneDNN packed``: the decoding engine's copy (``attnlab.functional.kernels.onednn``), packed once;
- ``MKL packed``: MKL's ``cblas_sgemm_pack`` copy, where this build has it;
- ``thin``: attnlab's thin-product kernel (``attnlab.functional.kernels.thin``), where it runs, and
  ``thin wide``, its 16-column panels, where the CPU has AVX-512;
- with ``--bf16``, bf16 copies of the weights (half the bytes): ``oneDNN bf16 packed`` (bf16
  rows, as bf16 autocast multiplies) and ``thin bf16 pairs`` (bf16 rows by bf16 pair panels,
  AVX-512 BF16), where they run. oneDNN's rows are cast to bf16 before the timing; the thin
  kernel takes fp32 rows and rounds them itself;
- with ``--int8``, int8 copies (a quarter of the bytes, ``attnlab.inference.quantized``):
  ``PyTorch int8`` (its dynamic int8 linear, as ``DecodingEngine(int8=True)`` multiplies) and
  ``thin int8 quads`` (the same products on int8 quad panels, AVX-512 VNNI), where they run.

Microseconds per product (median of interleaved rounds) and the ratios F.linear / oneDNN packed,
oneDNN packed / thin (and / thin wide), with ``--bf16`` oneDNN bf16 packed / thin bf16 pairs, and
with ``--int8`` PyTorch int8 / thin int8 quads.

    .venv/bin/python -m benchmarks.thin_products [--threads N] [--bf16] [--int8]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F

from attnlab.functional.kernels import onednn, thin
from attnlab.inference import quantized
from benchmarks.common import RESULTS, interleave

SHAPES = [(512, 1536), (512, 512), (512, 2048), (2048, 512), (512, 8000)]  # (in, out) of a base decoder
STREAMED_BYTES = 100e6


def kernels(
    x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor, bf16: bool = False, int8: bool = False
) -> dict[str, Callable[[], None]]:
    """One callable per kernel that multiplies ``x`` by every weight in turn (and by bf16 or int8 copies)."""
    rows = x.shape[0]
    packed = [onednn.pack(w, rows) for w in weights]
    peers = {
        "F.linear": lambda: [F.linear(x, w, bias) for w in weights],
        "oneDNN packed": lambda: [onednn.linear(x, p, bias) for p in packed],
    }
    if torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear"):
        mkl = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights]
        peers["MKL packed"] = lambda: [torch.ops.mkl._mkl_linear(x, p, w, bias, rows) for p, w in zip(mkl, weights)]
    if thin.available():
        panels = [thin.pack(w, wide=False) for w in weights]
        peers["thin"] = lambda: [thin.linear(x, p, w.shape[0], bias) for p, w in zip(panels, weights)]
    if thin.wide_available():
        wide = [thin.pack(w, wide=True) for w in weights]
        peers["thin wide"] = lambda: [thin.linear(x, p, w.shape[0], bias) for p, w in zip(wide, weights)]
    if bf16 and onednn.bf16_available():
        x16, bias16 = x.bfloat16(), bias.bfloat16()
        packed16 = [onednn.pack(w.bfloat16(), rows) for w in weights]
        peers["oneDNN bf16 packed"] = lambda: [onednn.linear(x16, p, bias16) for p in packed16]
    if bf16 and thin.pairs_available():
        pairs = [thin.pack_pairs(w) for w in weights]
        peers["thin bf16 pairs"] = lambda: [thin.linear(x, p, w.shape[0], bias) for p, w in zip(pairs, weights)]
    if int8 and quantized.available():
        prepacked, reduce = [quantized.prepack(w, bias) for w in weights], quantized.reduce_range()
        peers["PyTorch int8"] = lambda: [torch.ops.quantized.linear_dynamic(x, p, reduce) for p in prepacked]
    if int8 and thin.int8_available():
        quads = [thin.pack_int8(*quantized.quantize_weight(w)) for w in weights]
        peers["thin int8 quads"] = lambda: [thin.linear_int8(x, p, bias) for p in quads]
    return peers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 40], help="rows per product")
    parser.add_argument("--bf16", action="store_true", help="also bf16 copies of the weights")
    parser.add_argument("--int8", action="store_true", help="also int8 copies of the weights")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    print(f"{args.threads} threads; microseconds per product, weights streamed from memory")
    with torch.inference_mode():
        for rows in args.rows:
            for n_in, n_out in SHAPES:
                copies = max(2, round(STREAMED_BYTES / (4 * n_in * n_out)))
                weights = [torch.randn(n_out, n_in) for _ in range(copies)]
                x, bias = torch.randn(rows, n_in), torch.randn(n_out)
                samples, _ = interleave(kernels(x, weights, bias, args.bf16, args.int8), args.repeats)
                us = {name: 1e6 * statistics.median(t) / copies for name, t in samples.items()}
                ratio = us["F.linear"] / us["oneDNN packed"]
                thin_ratio = us["oneDNN packed"] / us["thin"] if "thin" in us else None
                wide_ratio = us["oneDNN packed"] / us["thin wide"] if "thin wide" in us else None
                both = {"oneDNN bf16 packed", "thin bf16 pairs"} <= us.keys()
                pairs_ratio = us["oneDNN bf16 packed"] / us["thin bf16 pairs"] if both else None
                quads = {"PyTorch int8", "thin int8 quads"} <= us.keys()
                quads_ratio = us["PyTorch int8"] / us["thin int8 quads"] if quads else None
                results.append(
                    {
                        "rows": rows,
                        "in": n_in,
                        "out": n_out,
                        "us": us,
                        "f_linear_over_onednn": ratio,
                        "onednn_over_thin": thin_ratio,
                        "onednn_over_thin_wide": wide_ratio,
                        "onednn_bf16_over_thin_bf16_pairs": pairs_ratio,
                        "pytorch_int8_over_thin_int8_quads": quads_ratio,
                    }
                )
                print(
                    f"rows {rows:2} {n_in:4}x{n_out:<4} "
                    + "  ".join(f"{k} {v:7.0f}" for k, v in us.items())
                    + f"   F.linear / oneDNN packed {ratio:.2f}x"
                    + ("" if thin_ratio is None else f"   oneDNN packed / thin {thin_ratio:.2f}x")
                    + ("" if wide_ratio is None else f"   / thin wide {wide_ratio:.2f}x")
                    + ("" if pairs_ratio is None else f"   bf16: oneDNN / pairs {pairs_ratio:.2f}x")
                    + ("" if quads_ratio is None else f"   int8: PyTorch / quads {quads_ratio:.2f}x")
                )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "thin_products.json"
    meta = {
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
