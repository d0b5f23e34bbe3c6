"""The README's speed table, generated from ``attnlab bench``'s JSON.

Rewrites what lies between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in README.md with
one line per case of the report; the rest of the file is left as it is.

    python -m benchmarks.readme_table [--json benchmarks/results/bench.json] [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
ROOT = Path(__file__).resolve().parent.parent


def side_value(row: dict, side: str) -> str:
    """A side's median as its case reports it: tokens or images per second, else milliseconds."""
    s = row["sides"][side]
    return f"{s['rate']:,.0f} {row['unit']}" if s["rate"] is not None else f"{s['median_ms']:,.1f} ms"


def machine_line(report: dict) -> str:
    """One sentence: the command, the machine, the versions and the GEMM peaks of the run."""
    m, gemm = report["machine"], report["gemm_gflops"]["peak"]
    flags = ", ".join(flag for flag, present in m["cpu_flags"].items() if present) or "none of avx2/avx512/amx"
    peaks = ", ".join(f"{dtype} {rate:,.0f} GFLOP/s" for dtype, rate in gemm.items())
    return (
        f"`{report['command']}` on {m['cpu_model']} ({m['cores']} cores; {flags}), {m['threads']} threads, "
        f"torch {m['torch']}, transformers {m['transformers']}; large-matmul peak {peaks}."
        + ("" if m["bf16"] else " No bf16 instructions here: bf16 cases skipped, `precision: auto` stays fp32.")
    )


def table_lines(report: dict) -> list[str]:
    """The Markdown table, one line per case."""
    lines = [
        "| case | what | peer | attnlab | peer | peer time / ours | MFU attnlab / peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["cases"]:
        ours, peer = row["ours"], row["peer"]
        mfus = f"{row['sides'][ours]['mfu']:.0%} / {row['sides'][peer]['mfu']:.0%}"
        lines.append(
            f"| `{row['case']}` | {row['what']} | {peer} | {side_value(row, ours)} | {side_value(row, peer)} "
            f"| {row['ratio']:.2f}x | {mfus} |"
        )
    return lines


def block(report: dict) -> str:
    """What goes between the markers (the markers excluded)."""
    return "\n".join([machine_line(report), "", *table_lines(report)])


def rewrite(text: str, body: str) -> str:
    """``text`` with the lines between the markers replaced by ``body``.

    Raises:
        ValueError: the markers are missing, repeated or out of order.
    """
    starts, ends = text.count(START), text.count(END)
    if starts != 1 or ends != 1 or text.index(START) > text.index(END):
        raise ValueError(
            f"expected one {START} line before one {END} line; found {starts} start and {ends} end markers"
        )
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{body.strip()}\n{END}{tail}"


def update_readme(json_path: Path, readme: Path) -> Path:
    """Rewrite ``readme``'s bench block from the report at ``json_path``; returns ``readme``."""
    if not json_path.exists():
        raise FileNotFoundError(f"no bench report at {json_path}: run `attnlab bench` first")
    report = json.loads(json_path.read_text())
    readme.write_text(rewrite(readme.read_text(), block(report)))
    return readme


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "bench.json")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args()
    print(f"rewrote the bench block of {update_readme(args.json, args.readme)}")


if __name__ == "__main__":
    main()
