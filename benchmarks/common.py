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


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Seconds one call takes, and the share of the machine's busy CPU time that was not ours."""
    busy0, _ = busy_jiffies()
    cpu0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    busy1, _ = busy_jiffies()
    busy = (busy1 - busy0) / os.sysconf("SC_CLK_TCK")
    foreign = max(0.0, busy - cpu) / max(busy, 1e-9)
    return wall, foreign


def interleave(peers: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, max_foreign: float = 0.25):
    """Run the peers A B C A B C ...; per peer the kept times (blocks where others took the CPU are dropped)."""
    for _ in range(warmup):
        for fn in peers.values():
            fn()
    times = {name: [] for name in peers}
    dropped = 0
    for _ in range(repeats):
        for name, fn in peers.items():
            wall, foreign = timed(fn)
            if foreign > max_foreign:
                dropped += 1
            times[name].append((wall, foreign))
    kept = {}
    for name, samples in times.items():
        clean = [w for w, f in samples if f <= max_foreign]
        kept[name] = clean or [w for w, _ in samples]  # everything noisy: keep all, flag it
    return kept, dropped


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": 1e3 * statistics.median(samples), "min_ms": 1e3 * min(samples), "n": len(samples)}


def matmul_gflops(n: int = 2048, dtype: torch.dtype = torch.float32, repeats: int = 5) -> float:
    """The rate of one large square matmul on this machine, now: the denominator of MFU."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b)[0] for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def peak_rss_of(module: str, args: list[str]) -> float:
    """Peak RSS (MiB) above the set-up of one case, run alone in a fresh interpreter."""
    # A fixed mmap threshold makes glibc hand large freed blocks back, so the peak RSS is the peak of
    # live memory rather than of memory the allocator kept after a free.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run(
        [sys.executable, "-m", module, "--memory-case", *args], capture_output=True, text=True, check=True,
        cwd=Path(__file__).parent.parent, env=env,
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
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path
