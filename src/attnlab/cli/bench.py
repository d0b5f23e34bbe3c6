"""``attnlab bench [--quick] [--only NAME ...] [--device cpu|cuda] [--threads N] [--out FILE]``.

Runs the benchmark suite of the repository's ``benchmarks/`` folder (``benchmarks.suite``): each
case runs attnlab and its peers interleaved in this process and prints one line; a table follows
with the ratio (peer time / ours: > 1, attnlab is faster) and each side's MFU (FLOPs of one call
over its time, over a large matmul's rate measured in the same run). The JSON report (machine,
versions, GEMM rates, per-case min and median times, noise) goes to ``--out``
(``benchmarks/results/bench.json``). ``attnlab bench --readme`` rewrites README.md's speed table
from that report instead of running anything; ``--readme A.json B.json`` writes one table per
report (runs on different machines).

Like ``attnlab train``, the command starts itself again under tcmalloc where it is installed
(``--allocator``; glibc's malloc maps fresh pages for every large tensor, and training steps pay
for their faults: docs/results/bench.md); every side of a case runs under the same malloc, which
the report names.

The suite lives in the repository, not in the installed package: run the command from an attnlab
checkout. ``--list`` prints the cases. Cases that cannot run here are skipped with one line
per reason (the ``ct2-*`` cases, against CTranslate2, need the ``ctranslate2`` package and CPU;
each runs in a fresh interpreter that loads ctranslate2 before torch, see
``benchmarks.ctranslate2_bar``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from attnlab.cli.inference import positive_int
from attnlab.cli.train import relaunch
from attnlab.config import ConfigError

_PACKAGE_ROOT = Path(__file__).resolve().parents[3]  # the checkout, for an editable install
NAME = 24  # the case column: the longest name, attn-causal-fwdbwd-1024, and a space


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench``."""
    parser = subparsers.add_parser("bench", help="run the speed suite against the peers (MFU, JSON, README table)")
    parser.add_argument("--quick", action="store_true", help="the quick cases, 3 rounds (a few minutes on 2 cores)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="cases by name or prefix (e.g. vit, attn-fwd)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=positive_int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed rounds (default: 3 quick, 7 full)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default benchmarks/results/bench.json)")
    parser.add_argument(
        "--allocator", choices=["auto", "system", "tcmalloc", "jemalloc"], default="auto",
        help="the malloc the suite runs under, as training.allocator: auto takes tcmalloc where installed",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the cases and exit")
    parser.add_argument(
        "--readme", nargs="*", type=Path, default=None, metavar="JSON",
        help="rewrite README.md's speed table from these reports (one table each; none: --out); no run",
    )  # fmt: skip
    parser.add_argument("--sizes", default="full", help=argparse.SUPPRESS)  # "tiny": tests only
    parser.set_defaults(func=run)
    return parser


def _fail(message: str) -> int:
    print(f"attnlab bench: error: {message}", file=sys.stderr)
    return 2


def _import(name: str):
    """``benchmarks.<name>`` from the checkout in or above the working folder (or this package's)."""
    for root in (Path.cwd(), *Path.cwd().parents, _PACKAGE_ROOT):
        if (root / "benchmarks" / "suite.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    return importlib.import_module(f"benchmarks.{name}")


def run(args: argparse.Namespace) -> int:
    """Run the suite (or ``--list``, ``--readme``); print the table, write the JSON."""
    try:
        suite, readme_table = _import("suite"), _import("readme_table")
    except ImportError as error:
        if (error.name or "").startswith("benchmarks"):
            return _fail(
                f"{error.name} is missing: `attnlab bench` runs the benchmarks/ folder of an attnlab "
                f"checkout; run it from one (looked in {Path.cwd()} and above, and in {_PACKAGE_ROOT})"
            )
        return _fail(f"the suite needs {error.name or error}, which is missing: pip install 'attnlab[hf]'")
    out = args.out or readme_table.ROOT / "benchmarks" / "results" / "bench.json"
    if args.readme is not None:
        try:
            readme = readme_table.update_readme(args.readme or [out], readme_table.ROOT / "README.md")
        except FileNotFoundError as error:
            return _fail(str(error))
        print(f"rewrote the bench block of {readme}")
        return 0
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return _fail("--device cuda but torch.cuda.is_available() is False on this machine")
    torch.set_num_threads(args.threads)
    try:
        sizes = suite.with_sizes(args.sizes)
        cases = suite.select(suite.all_cases(sizes, suite.bf16_supported(device)), args.only, args.quick)
    except ValueError as error:
        return _fail(str(error))
    if args.list:
        for case in cases:
            print(f"{case.name:{NAME}} {case.dtype:5} {'quick' if case.quick else '':5} {case.what}")
        return 0
    if getattr(args, "process_argv", None) is not None:  # the console command, as attnlab train
        try:
            relaunch(args.allocator, args.process_argv)
        except ConfigError as error:
            return _fail(str(error))
    cases, skipped = suite.runnable(cases, device)
    for line in skipped:
        print(line)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = _run(suite, cases, sizes, device, args, out, skipped)
    print("\n".join(["", *table(report)]))
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


def _run(suite, cases: list, sizes, device, args: argparse.Namespace, out: Path, skipped: list[str]) -> dict:
    machine = suite.machine(device, args.threads)
    if not machine["bf16"]:
        print("no bf16 instructions on this device: bf16 cases skipped (precision auto stays fp32)")
    repeats = args.repeats or (3 if args.quick else 7)
    print(f"{len(cases)} cases, {repeats} rounds each, {args.threads} threads on {machine['cpu_model']}", flush=True)
    head = {"command": _command(args), "machine": machine, "sizes": args.sizes, "skipped": skipped}

    def progress(row: dict, partial: dict) -> None:  # print the row; keep what is done if the run stops
        _progress(row)
        out.write_text(json.dumps({**head, **partial}, indent=2))

    warmup = 0 if args.quick else 1
    report = suite.run_suite(cases, device, repeats, sizes.gemm_n, warmup=warmup, report=progress, sizes=sizes)
    return {**head, **report}


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (options at their defaults left out)."""
    words = ["attnlab bench", *(["--quick"] if args.quick else []), *(["--only", *args.only] if args.only else [])]
    words += [f"--threads {args.threads}"] if args.threads != 2 else []
    words += [f"--device {args.device}"] if args.device != "cpu" else []
    return " ".join(words + ([f"--repeats {args.repeats}"] if args.repeats else []))


def _progress(row: dict) -> None:
    ours, peer = row["sides"][row["ours"]], row["sides"][row["peer"]]
    print(
        f"{row['case']:{NAME}} ours {ours['median_ms']:9.1f} ms, {row['peer']} {peer['median_ms']:9.1f} ms: "
        f"x{row['ratio']:.2f}",
        flush=True,
    )
    if "tokens" in row:
        print("  " + token_line(row["tokens"]), flush=True)


def token_line(check: dict) -> str:
    """One line of a case's token check: which sides make the reference's tokens, which do not."""
    differ = {name: a["differing_tokens"] for name, a in check["peers"].items()}
    counts = ", ".join(f"{name} {n}" for name, n in differ.items())
    if check["match"]:
        return f"tokens differing from {check['reference']}: {counts} ({', '.join(check['must_match'])} must be 0: ok)"
    return (
        f"TOKEN MISMATCH: {', '.join(check['mismatched'])} differ from {check['reference']} "
        f"(tokens differing: {counts}); this case's speeds compare different translations"
    )


def table(report: dict) -> list[str]:
    """The table of a report: one line per case."""
    gemm = report["gemm_gflops"]["peak"]
    lines = [
        "GEMM peak "
        + ", ".join(f"{d} {r:.0f} GFLOP/s" for d, r in gemm.items())
        + "; ratio = peer time / ours (> 1: attnlab faster); cpu = the same for this process's CPU time; "
        + "others = share of the CPU other processes took (median round)",
        f"{'case':{NAME}} {'dtype':5} {'attnlab':>15} {'peer':>15} {'':22} {'ratio':>6} {'cpu':>5} "
        f"{'MFU ours':>8} {'MFU peer':>8} {'others':>6} {'kept':>5}",
    ]
    for row in report["cases"]:
        ours, peer = row["sides"][row["ours"]], row["sides"][row["peer"]]
        noise = row["noise"]
        lines.append(
            f"{row['case']:{NAME}} {row['dtype']:5} {_value(ours, row['unit']):>15} {_value(peer, row['unit']):>15} "
            f"{row['peer'][:22]:22} {row['ratio']:6.2f} {row['cpu_time_ratio'] or 0:5.2f} "
            f"{ours['mfu']:8.1%} {peer['mfu']:8.1%} "
            f"{noise['foreign_share_median']:6.0%} {noise['rounds_kept']:>2}/{noise['rounds']}"
        )
    return lines


def _value(side: dict, unit: str) -> str:
    return f"{side['rate']:.1f} {unit}" if side["rate"] is not None else f"{side['median_ms']:.1f} ms"
