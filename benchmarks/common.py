"""Shared timing helpers for the benchmarks: interleaved peers, CPU-share checks, matmul rate, peak RSS."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def _machine_busy_seconds() -> float:
    """CPU seconds all cores have been busy since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object]) -> tuple[float, float, float]:
    """Wall seconds of ``fn()``, this process's CPU seconds, and the share of all cores that other
    processes used meanwhile (0 on a quiet machine)."""
    busy0, own0, start = _machine_busy_seconds(), time.process_time(), time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    busy, own = _machine_busy_seconds() - busy0, time.process_time() - own0
    return wall, own, max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def interleave(peers: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, max_foreign: float = 0.25):
    """Run the peers A B C A B C ...; per peer the wall times of the quiet rounds (no block in which
    other processes took more than ``max_foreign`` of the cores; every round when fewer than two
    are quiet), and the number of noisy rounds."""
    for _ in range(warmup):
        for fn in peers.values():
            fn()
    rounds = [{name: timed(fn) for name, fn in peers.items()} for _ in range(repeats)]
    quiet = [r for r in rounds if all(sample[2] <= max_foreign for sample in r.values())]
    kept = quiet if len(quiet) >= 2 else rounds
    return {name: [r[name][0] for r in kept] for name in peers}, repeats - len(quiet)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(samples), "min_ms": 1e3 * min(samples), "n": len(samples)}


def matmul_gflops(
    n: int = 2048,
    dtype: torch.dtype = torch.float32,
    repeats: int = 5,
    product: Callable[[torch.Tensor, torch.Tensor], object] = torch.matmul,
) -> float:
    """The rate of one large square matmul on this machine, now (best of ``repeats``, after one
    untimed call): the denominator of MFU. ``product(a, b)`` of two (n, n) matrices is any
    n x n x n product (``a @ b`` by default, or ``a @ b^T`` through another library)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    product(a, b)
    best = min(timed(lambda: product(a, b))[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def peak_rss_of(module: str, args: list[str]) -> float:
    """Peak RSS (MiB) above the set-up of one case, run alone in a fresh interpreter."""
    # A fixed mmap threshold makes glibc hand large freed blocks back, so the peak RSS is the peak of
    # live memory rather than of memory the allocator kept after a free.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-m", module, "--memory-case", *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
        env=env,
    )
    return float(out.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> float:
    """Start a new peak-RSS window (Linux: clear_refs 5 resets VmHWM); returns the RSS now (MiB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """The peak RSS since the last ``reset_peak_rss`` (MiB)."""
    return _status_mib("VmHWM")


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def write_json(name: str, payload: dict) -> Path:
    """``payload`` as ``benchmarks/results/<name>.json``; returns the path."""
    return write_json_to(RESULTS / f"{name}.json", payload)


def write_json_to(path: Path, payload: dict) -> Path:
    """``payload`` as indented JSON at ``path`` (its folder made); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
