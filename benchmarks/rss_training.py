"""Resident memory of a training run over time: sample its RSS, write CSV, plot PNG.

    python -m benchmarks.rss_training run --minutes 30 --csv rss.csv \\
        configs/libreoffice_transformer.yaml output_dir=/tmp/rss --fresh
    python -m benchmarks.rss_training plot rss.csv --out docs/results/rss_libreoffice.png
    python -m benchmarks.rss_training compare a.csv b.csv --label glibc --label jemalloc --out rss.png

``run`` starts ``attnlab train`` with the given arguments (``training.max_minutes`` set from
``--minutes``), reads ``VmRSS`` of the process from ``/proc`` every ``--every`` seconds (Linux),
and writes ``seconds,rss_mib`` rows; ``plot`` draws such a CSV, each sample and its rolling median
(single samples swing with the size of the batch in flight), with the band of +-10% around the
median after warm-up (the first ``--warmup`` seconds are excluded), and prints the spread.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def rss_mib(pid: int) -> float | None:
    """The resident set size of ``pid`` in MiB, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def sample(train_args: list[str], minutes: float, every: float, out: Path) -> None:
    command = [sys.executable, "-m", "attnlab.cli.main", "train", *train_args, f"training.max_minutes={minutes}"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.monotonic()
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seconds", "rss_mib"])
        while process.poll() is None:
            if (rss := rss_mib(process.pid)) is not None:
                writer.writerow([round(time.monotonic() - start), round(rss)])
                f.flush()
            time.sleep(every)
    print(f"exit code {process.returncode}; samples in {out}")


def read_csv(path: Path) -> tuple[list[float], list[float]]:
    seconds, rss = [], []
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["seconds"].isdigit():
                seconds.append(float(row["seconds"]))
                rss.append(float(row["rss_mib"]))
    return seconds, rss


def rolling_median(seconds: list[float], values: list[float], window: float) -> list[float]:
    """The median of the samples in the ``window`` seconds ending at each sample."""
    return [statistics.median(v for s, v in zip(seconds, values) if t - window < s <= t) for t in seconds]


def plot(path: Path, out: Path, warmup: float, window: float, title: str) -> None:
    seconds, rss = read_csv(path)
    trend = rolling_median(seconds, rss, window)
    after = [r for s, r in zip(seconds, trend) if s >= warmup]
    median = statistics.median(after)
    low, high = min(after), max(after)
    fig = Figure(figsize=(7, 3.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([s / 60 for s in seconds], rss, lw=0.6, color="tab:blue", alpha=0.5, label="RSS every sample")
    ax.plot([s / 60 for s in seconds], trend, lw=1.5, color="tab:blue", label=f"median of the last {window:.0f} s")
    ax.axhspan(0.9 * median, 1.1 * median, color="tab:green", alpha=0.15, label="+-10% around it after warm-up")
    ax.axvline(warmup / 60, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    samples = [r for s, r in zip(seconds, rss) if s >= warmup]
    print(
        f"after {warmup:.0f} s: {window:.0f}-s median {median:.0f} MiB, from {low:.0f} ({low / median - 1:+.1%}) "
        f"to {high:.0f} ({high / median - 1:+.1%}); single samples {min(samples):.0f}-{max(samples):.0f} MiB; "
        f"{len(samples)} samples; plot {out}"
    )


def compare(paths: list[Path], labels: list[str], out: Path, window: float, title: str) -> None:
    """Several runs' rolling-median RSS on one plot (a run per allocator or setting)."""
    fig = Figure(figsize=(7, 3.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for path, label in zip(paths, labels):
        seconds, rss = read_csv(path)
        trend = rolling_median(seconds, rss, window)
        ax.plot([t / 60 for t in seconds], trend, lw=1.5, label=label)
        late = [r for t, r in zip(seconds, trend) if t >= 600]  # after 10 minutes
        spread = f", {min(late):.0f}-{max(late):.0f} MiB after 10 min" if late else ""
        print(f"{label}: {trend[-1]:.0f} MiB at {seconds[-1] / 60:.1f} min{spread}")
    ax.set_xlabel("minutes")
    ax.set_ylabel(f"RSS, median of the last {window:.0f} s (MiB)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(f"plot {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("--minutes", type=float, default=30.0)
    run.add_argument("--every", type=float, default=10.0)
    run.add_argument("--csv", type=Path, default=Path("rss.csv"))
    run.add_argument("train_args", nargs=argparse.REMAINDER, help="attnlab train's arguments (config, overrides)")
    draw = commands.add_parser("plot")
    draw.add_argument("csv", type=Path)
    draw.add_argument("--out", type=Path, default=Path("rss.png"))
    draw.add_argument("--warmup", type=float, default=300.0)
    draw.add_argument("--window", type=float, default=120.0)
    draw.add_argument("--title", default="attnlab train configs/libreoffice_transformer.yaml: RSS")
    many = commands.add_parser("compare")
    many.add_argument("csv", type=Path, nargs="+")
    many.add_argument("--label", action="append", required=True, help="one per CSV, in order")
    many.add_argument("--out", type=Path, default=Path("rss_compare.png"))
    many.add_argument("--window", type=float, default=120.0)
    many.add_argument("--title", default="attnlab train configs/libreoffice_transformer.yaml: RSS")
    args = parser.parse_args()
    if args.command == "compare":
        if len(args.label) != len(args.csv):
            parser.error(f"{len(args.csv)} CSV files but {len(args.label)} --label values: give one per file")
        compare(args.csv, args.label, args.out, args.window, args.title)
    elif args.command == "run":
        sample(args.train_args, args.minutes, args.every, args.csv)
    else:
        plot(args.csv, args.out, args.warmup, args.window, args.title)


if __name__ == "__main__":
    main()
