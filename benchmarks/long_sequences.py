"""The longest sequence one base Transformer encoder layer trains on within a memory limit.

The layer is the base model's (d_model 512, 8 heads, FFN 2048, post-norm, dropout 0.1), batch 1,
one training step (forward, a loss, backward; no optimiser) in fp32 or under bf16 autocast. Each
length runs alone in a fresh interpreter whose address space is capped at the limit (an
allocation past it fails there, so the machine never gives the case more), and reports its
peak RSS (the whole process, ``VmHWM``) and the seconds of the step. Lengths double from
``--start`` until a step does not fit, then bisect to ``--resolution`` tokens. A length whose step
would take longer than ``--max-seconds`` (predicted as 4x the last one; attention is quadratic)
is not run: the search stops there and says so, and the limit's length is then extrapolated from
a fit of the measured peaks (degree 2 in N), as is the ``--project-gib`` limit.

Kernels: ``default`` is the layer as it runs (the dispatcher's choice: SDPA's fused CPU kernel,
memory linear in N); ``explicit`` forbids the fused path (``MultiHeadAttention.fused = False``:
the (H, N, N) scores and weights are formed and kept for backward).

    python -m benchmarks.long_sequences --limit-gib 8 --threads 1            # a few minutes
    python -m benchmarks.long_sequences --limit-gib 8 --kernels explicit --dtypes fp32
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from attnlab.layers import EncoderLayer
from benchmarks.common import _status_mib, write_json

D_MODEL, HEADS, FFN = 512, 8, 2048
GIB = 1 << 30
WARMUP_TOKENS = 256


def make_step(n: int, dtype: str, kernel: str):
    """One training step of the base encoder layer on ``(1, n, 512)``: forward, loss, backward."""
    torch.manual_seed(0)
    layer = EncoderLayer(D_MODEL, HEADS, FFN).train()
    layer.self_attn.fused = False if kernel == "explicit" else None
    x = torch.randn(1, n, D_MODEL)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = layer(x).float().square().mean()
        loss.backward()
        layer.zero_grad(set_to_none=True)

    return step


def memory_case(argv: list[str]) -> None:
    """Child process: one step at one length under an address-space cap; prints a JSON line."""
    n, dtype, kernel, threads, limit_mib = int(argv[0]), argv[1], argv[2], int(argv[3]), float(argv[4])
    torch.set_num_threads(threads)
    make_step(WARMUP_TOKENS, dtype, kernel)()  # first-call set-up of the kernels, not counted
    step = make_step(n, dtype, kernel)
    # Cap the address space so the process cannot grow past the limit: what it has mapped now
    # plus what the limit leaves above its resident set (fresh allocations are all touched).
    headroom = int((limit_mib - _status_mib("VmRSS")) * (1 << 20))
    cap = int(_status_mib("VmSize") * (1 << 20)) + max(headroom, 0)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    start = time.perf_counter()
    try:
        step()
        result = {"fits": True, "seconds": time.perf_counter() - start}
    except (RuntimeError, MemoryError) as error:  # torch's "can't allocate memory" past the cap
        result = {"fits": False, "error": str(error).splitlines()[0][:200]}
    result["peak_mib"] = _status_mib("VmHWM")
    result["fits"] = result["fits"] and result["peak_mib"] <= limit_mib
    print(json.dumps(result))


def run_length(n: int, dtype: str, kernel: str, args) -> dict:
    """One length in a fresh interpreter (one at a time); its JSON result with ``n`` added."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": str(args.threads)}
    flags = [str(n), dtype, kernel, str(args.threads), str(args.limit_gib * 1024)]
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.long_sequences", "--memory-case", *flags],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        env=env,
    )
    if out.returncode != 0:  # killed (e.g. a failure outside torch's allocator): does not fit
        return {"n": n, "fits": False, "error": f"exit {out.returncode}: {out.stderr.strip()[-200:]}"}
    result = {"n": n, **json.loads(out.stdout.strip().splitlines()[-1])}
    status = f"{result['peak_mib']:8.0f} MiB " + (f"{result['seconds']:7.1f} s" if result["fits"] else "does not fit")
    print(f"  {dtype:<4} {kernel:<8} N={n:<7} {status}", flush=True)
    return result


def search(dtype: str, kernel: str, args) -> dict:
    """Doubling, then bisection, for the longest length that fits; stops early when too slow."""
    runs, n, good, bad = [], args.start, None, None
    while bad is None:
        if runs and runs[-1]["fits"] and 4 * runs[-1]["seconds"] > args.max_seconds:
            return summarise(dtype, kernel, runs, good, None, stopped_by_time=True, args=args)
        runs.append(run_length(n, dtype, kernel, args))
        good, bad = (n, None) if runs[-1]["fits"] else (good, n)
        n *= 2
    while good is not None and bad - good > args.resolution:
        mid = (good + bad) // 2 // 256 * 256
        runs.append(run_length(mid, dtype, kernel, args))
        good, bad = (mid, bad) if runs[-1]["fits"] else (good, mid)
    return summarise(dtype, kernel, runs, good, bad, stopped_by_time=False, args=args)


def summarise(dtype: str, kernel: str, runs: list[dict], good, bad, stopped_by_time: bool, args) -> dict:
    """The search's result, with the fitted length at the limit and at ``--project-gib``."""
    fitted = [r for r in runs if r["fits"]]
    row = {"dtype": dtype, "kernel": kernel, "longest_measured": good, "first_over": bad, "runs": runs}
    row["stopped_by_time"] = stopped_by_time
    row["seconds_at_longest"] = next((r["seconds"] for r in runs if r["n"] == good), None)
    if len(fitted) >= 3:
        ns = np.array([r["n"] for r in fitted], dtype=float)
        memory = np.polyfit(ns, [r["peak_mib"] for r in fitted], 2)
        seconds = np.polyfit(ns, [r["seconds"] for r in fitted], 2)
        row["fit_peak_mib"], row["fit_seconds"] = memory.tolist(), seconds.tolist()
        for gib in (args.limit_gib, args.project_gib):
            length = _length_at(memory, gib * 1024)
            row[f"fit_length_at_{gib:g}_gib"] = length
            row[f"fit_seconds_at_{gib:g}_gib"] = float(np.polyval(seconds, length)) if length else None
    return row


def _length_at(coefficients: np.ndarray, mib: float) -> int | None:
    """The largest positive N where the fitted peak reaches ``mib``."""
    roots = np.roots(coefficients - np.array([0.0, 0.0, mib]))
    real = [r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0]
    return int(max(real)) if real else None


def print_table(rows: list[dict], args) -> None:
    p = f"{args.project_gib:g}"
    print(
        f"\n| dtype | kernel | longest N in {args.limit_gib:g} GiB (measured) | s/step there | "
        f"fit: N at {args.limit_gib:g} GiB | fit: N at {p} GiB | fit: s/step at {p} GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        longest = f"{row['longest_measured']}" + (" (stopped: time)" if row["stopped_by_time"] else "")
        seconds = row["seconds_at_longest"]
        fit_n = row.get(f"fit_length_at_{args.limit_gib:g}_gib")
        proj_n, proj_s = row.get(f"fit_length_at_{p}_gib"), row.get(f"fit_seconds_at_{p}_gib")
        print(
            f"| {row['dtype']} | {row['kernel']} | {longest} | {seconds:.1f} | {fit_n or '-'} | {proj_n or '-'} | "
            + (f"{proj_s:.0f} |" if proj_s else "- |")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit-gib", type=float, default=24.0, help="the memory limit (whole process)")
    parser.add_argument("--project-gib", type=float, default=24.0, help="also extrapolate the length at this limit")
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--kernels", nargs="+", default=["default", "explicit"], choices=["default", "explicit"])
    parser.add_argument("--start", type=int, default=1024)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="longest step the search will run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory-case", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_case:
        return memory_case(args.memory_case)
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads; "
        f"encoder layer d={D_MODEL} h={HEADS} ffn={FFN}, batch 1; limit {args.limit_gib:g} GiB"
    )
    rows = [search(dtype, kernel, args) for kernel in args.kernels for dtype in args.dtypes]
    print_table(rows, args)
    path = write_json("long_sequences", {"config": vars(args), "torch": torch.__version__, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
