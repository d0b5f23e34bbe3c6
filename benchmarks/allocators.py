"""Training speed and resident memory under each malloc: glibc, glibc with a fixed mmap threshold, jemalloc, tcmalloc.

    python -m benchmarks.allocators --steps 200 --rounds 2 [--config CONFIG] [key=value ...]

An allocator is chosen when a process starts, so each case is one ``attnlab train`` process
(``training.allocator`` names the malloc; ``system`` keeps glibc's). Rounds interleave the cases so a
change of load on the machine hits each of them alike. Per case: CPU seconds per training step (the
trainer's ``clock: cpu``, set-up excluded), the median and peak resident size after the first quarter
of the run (sampled from ``/proc``), and how many steps ran. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.rss_training import rss_mib

CASES = {
    "glibc": ["training.allocator=system"],
    "glibc, mmap threshold 128 KiB": ["training.allocator=system", "training.malloc_mmap_threshold=131072"],
    "jemalloc": ["training.allocator=jemalloc"],
    "tcmalloc": ["training.allocator=tcmalloc"],
}
STOPPED = re.compile(r"stopped: \S+ at step (\d+) .* after ([\d.]+) s training")


def run_case(config: str, overrides: list[str], steps: int, every: float, out_dir: Path) -> dict:
    """One ``attnlab train`` process: CPU s per step, RSS samples after the first quarter."""
    command = [
        sys.executable,
        "-m",
        "attnlab.cli.main",
        "train",
        config,
        f"output_dir={out_dir}",
        "--fresh",
        "--no-progress",
        f"training.max_steps={steps}",
        "training.max_minutes=null",
        "training.clock=cpu",
        "training.checkpoint_every=null",
        "training.keep_checkpoints=0",
        "training.average_last=null",
        "training.final_split=null",
        *overrides,
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    start, samples = time.monotonic(), []
    while process.poll() is None:
        if (rss := rss_mib(process.pid)) is not None:
            samples.append((time.monotonic() - start, rss))
        time.sleep(every)
    output = process.stdout.read()
    found = STOPPED.search(output)
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-2000:]}")
    done, cpu = int(found.group(1)), float(found.group(2))
    end = samples[-1][0] if samples else 0.0
    late = [rss for t, rss in samples if t >= end / 4] or [0.0]
    return {
        "steps": done,
        "cpu_s_per_step": cpu / done,
        "rss_median_mib": statistics.median(late),
        "rss_peak_mib": max(late),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/libreoffice_transformer.yaml")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--only", nargs="*", choices=sorted(CASES), help="a subset of the cases")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/allocators.json"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides for every case")
    args = parser.parse_args()
    cases = {name: CASES[name] for name in (args.only or CASES)}
    results: dict[str, list[dict]] = {name: [] for name in cases}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, overrides in cases.items():
                result = run_case(args.config, overrides + args.overrides, args.steps, args.every, Path(tmp) / "run")
                results[name].append(result)
                print(f"round {round_ + 1} {name}: {json.dumps(result)}", flush=True)
    print(f"\n{'allocator':32} {'CPU s/step':>10} {'RSS median':>11} {'RSS peak':>9}")
    for name, rows in results.items():
        step = statistics.median(r["cpu_s_per_step"] for r in rows)
        median = statistics.median(r["rss_median_mib"] for r in rows)
        peak = max(r["rss_peak_mib"] for r in rows)
        print(f"{name:32} {step:10.3f} {median:9.0f} M {peak:7.0f} M")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"config": args.config, "steps": args.steps, "results": results}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
