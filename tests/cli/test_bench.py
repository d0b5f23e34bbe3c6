"""``attnlab bench``: FLOPs against the paper's formula, MFU, the README block, the report, a tiny run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from benchmarks.attention import make_case
from benchmarks.flops import count_flops, mfu
from benchmarks.readme_table import END, START, block, rewrite

from attnlab.cli.main import main


@pytest.mark.parametrize("peer", ["attnlab", "torch"])
def test_attention_flops_are_the_paper_formula(peer):
    # A self-attention layer: QKᵀ and A V, 2·B·H·N²·d each, and four E x E projections on B·N rows.
    b, h, d, n = 2, 3, 8, 40
    e = h * d
    expected = 4 * b * h * n * n * d + 4 * (2 * b * n * e * e)
    with torch.no_grad():
        assert count_flops(make_case(peer, n, False, False, b, h, d)) == expected


def test_packed_linear_of_the_decoding_engine_is_counted():
    from attnlab.inference import onednn

    if not onednn.available():
        pytest.skip("this PyTorch build has no oneDNN packed linear")
    x, w = torch.randn(3, 5, 16), torch.randn(24, 16)
    packed = onednn.pack(w, 15)
    assert count_flops(lambda: onednn.linear(x, packed, None)) == 2 * 15 * 16 * 24


def test_mfu_is_rate_over_peak():
    assert mfu(flops=6e9, seconds=0.5, peak_gflops=24.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"seconds \(0"):
        mfu(1e9, 0.0, 10.0)


def _report(ratio: float = 1.25) -> dict:
    side = {"median_ms": 100.0, "min_ms": 90.0, "rate": None, "mfu": 0.5}
    return {
        "command": "attnlab bench --quick",
        "machine": {
            "cpu_model": "Test CPU",
            "cpu_flags": {"avx2": True, "avx512f": False},
            "cores": 2,
            "threads": 2,
            "torch": "2.x",
            "transformers": "5.x",
            "bf16": False,
        },
        "gemm_gflops": {"peak": {"fp32": 100.0}},
        "cases": [
            {
                "case": "attn-fwd-512",
                "what": "self-attention",
                "unit": "ms",
                "ours": "attnlab",
                "peer": "nn.MultiheadAttention",
                "ratio": ratio,
                "sides": {"attnlab": side, "nn.MultiheadAttention": {**side, "median_ms": 125.0, "mfu": 0.4}},
            }
        ],
    }


def test_readme_block_is_replaced_and_the_rest_kept():
    text = f"# Title\n\nbefore\n{START}\n| old | table |\n{END}\nafter\n"
    new = rewrite(text, block(_report()))
    assert new.startswith("# Title\n\nbefore\n" + START + "\n") and new.endswith(END + "\nafter\n")
    assert "| old | table |" not in new
    row = "| `attn-fwd-512` | self-attention | nn.MultiheadAttention | 100.0 ms | 125.0 ms | 1.25x | 50% / 40% |"
    assert row in new
    assert "bf16 cases skipped" in new  # the machine has no bf16: the block says so
    assert rewrite(new, block(_report(2.0))).count("2.00x") == 1  # a second rewrite replaces, never appends


@pytest.mark.parametrize("text", ["no markers", f"{END}\n{START}", f"{START}\n{START}\n{END}"])
def test_readme_without_one_pair_of_markers_is_a_clear_error(text):
    with pytest.raises(ValueError, match="bench:start"):
        rewrite(text, "body")


def test_unknown_case_lists_the_names(capsys):
    assert main(["bench", "--only", "attn-fwd-512", "nope", "--list"]) == 2
    err = capsys.readouterr().err
    assert "unknown case 'nope'" in err and "attn-fwd-512" in err and "vit-train" in err


def test_tiny_run_prints_the_row_and_writes_the_machine(tmp_path: Path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--sizes", "tiny", "--only", "vit-infer", "--repeats", "2", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    (row,) = [line for line in capsys.readouterr().out.splitlines() if re.match(r"vit-infer +fp32 ", line)]
    ratio = float(re.search(r"HF ViT \(SDPA\)\s+([0-9.]+)", row).group(1))
    assert ratio > 0
    report = json.loads(out.read_text())
    machine = report["machine"]
    assert machine["cores"] >= 1 and machine["threads"] == 1 and machine["torch"] == torch.__version__
    assert set(machine["cpu_flags"]) >= {"avx2", "avx512f", "avx512_bf16", "amx_bf16"} and machine["cpu_model"]
    assert report["gemm_gflops"]["peak"]["fp32"] > 0
    (case,) = report["cases"]
    ours = case["sides"]["attnlab"]
    assert 0 < ours["min_ms"] <= ours["median_ms"] and ours["flops_per_call"] > 0 and ours["mfu"] > 0
    assert 0 <= case["noise"]["foreign_share_median"] <= 1 and case["ratio"] == pytest.approx(ratio, abs=0.01)
