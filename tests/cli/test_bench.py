"""``attnlab bench``: FLOPs against the paper's formula, MFU, the README block, the report, a tiny run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from benchmarks.attention import make_case
from benchmarks.flops import count_flops, mfu
from benchmarks.readme_table import END, START, block, machine_line, rewrite, update_readme

from attnlab.cli.main import main
from attnlab.functional.kernels.causal import blocks_min_queries
from attnlab.inference import fused_decoder
from attnlab.training import memory


@pytest.mark.parametrize("peer", ["attnlab", "torch"])
def test_attention_flops_are_the_paper_formula(peer):
    # A self-attention layer: QKᵀ and A V, 2·B·H·N²·d each, and four E x E projections on B·N rows.
    b, h, d, n = 2, 3, 8, 40
    e = h * d
    expected = 4 * b * h * n * n * d + 4 * (2 * b * n * e * e)
    with torch.no_grad():
        assert count_flops(make_case(peer, n, False, False, b, h, d)) == expected


def test_packed_linear_of_the_decoding_engine_is_counted():
    from attnlab.functional.kernels import onednn

    if not onednn.available():
        pytest.skip("this PyTorch build has no oneDNN packed linear")
    x, w = torch.randn(3, 5, 16), torch.randn(24, 16)
    packed = onednn.pack(w, 15)
    assert count_flops(lambda: onednn.linear(x, packed, None)) == 2 * 15 * 16 * 24


def test_thin_products_of_the_decoding_engine_are_counted():
    """The thin kernel is a C call no torch mode sees: counting takes a kernel the counter does see."""
    from attnlab.functional.kernels import Thresholds, current_thresholds, set_thresholds
    from attnlab.inference.packed import PackedWeights

    set_thresholds(Thresholds(cpu_thin_max_rows=64))
    x, w = torch.randn(3, 5, 128), torch.randn(192, 128)
    weights = PackedWeights(rows=15)
    with torch.no_grad():
        assert count_flops(lambda: weights.linear(x, w, None)) == 2 * 15 * 128 * 192
    assert current_thresholds().cpu_thin_max_rows == 64  # restored after counting


def test_fused_step_attention_of_the_decoding_engine_is_counted():
    from attnlab.functional.kernels import Thresholds, set_thresholds
    from attnlab.functional.kernels.step import step_attention

    set_thresholds(Thresholds(cpu_step_fused_max_keys=1024))
    q, k = torch.randn(2, 4, 3, 16), torch.randn(2, 4, 40, 16)
    assert count_flops(lambda: step_attention(q, k, k)) == 4 * 2 * 4 * 3 * 40 * 16  # QKᵀ and A V


def test_full_blocks_are_counted_as_full_attention():
    """The blocks over every key are a C call too: counting takes SDPA, 4 B H n^2 d for attention."""
    from attnlab.functional.kernels import Thresholds, current_thresholds, set_thresholds

    set_thresholds(Thresholds(cpu_full_blocks_min_queries=1))
    b, h, d, n = 2, 2, 16, 64
    e = h * d
    expected = 4 * b * h * n * n * d + 4 * (2 * b * n * e * e)
    with torch.no_grad():
        assert count_flops(make_case("attnlab", n, False, False, b, h, d)) == expected
    assert current_thresholds().cpu_full_blocks_min_queries == 1  # restored after counting


def test_causal_blocks_are_counted_as_the_pairs_under_the_mask():
    """The causal blocks are a C call no torch mode sees: counting takes SDPA's causal mode, which
    counts the n (n + 1) / 2 (query, key) pairs under the mask, as FlashAttention does."""
    from attnlab.functional.kernels import Thresholds, current_thresholds, set_thresholds

    set_thresholds(Thresholds(cpu_causal_min_queries=1))
    b, h, d, n = 2, 2, 16, 64
    e = h * d
    expected = 4 * b * h * (n * (n + 1) // 2) * d + 4 * (2 * b * n * e * e)
    with torch.no_grad():
        assert count_flops(make_case("attnlab", n, True, False, b, h, d)) == expected
    assert current_thresholds().cpu_causal_min_queries == 1  # restored after counting


@pytest.mark.parametrize(("lq", "lk"), [(5, 5), (3, 7), (7, 3), (1, 9)])
def test_causal_sdpa_counts_the_pairs_its_mask_allows(lq, lk):
    """SDPA's causal mask lets query i see keys 0..i; forward 4 d per pair, backward 2.5 times that."""
    q, k = torch.randn(2, 3, lq, 8), torch.randn(2, 3, lk, 8)
    pairs = int((torch.ones(lq, lk).tril() > 0).sum())
    assert count_flops(lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True)) == 4 * 2 * 3 * pairs * 8
    q, k = q.requires_grad_(), k.requires_grad_()
    full = count_flops(lambda: F.scaled_dot_product_attention(q, k, k).sum().backward())
    causal = count_flops(lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True).sum().backward())
    assert causal * lq * lk == full * pairs


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


def test_readme_block_holds_one_table_per_machine(tmp_path):
    avx512 = _report(2.0)
    avx512["machine"] = {**avx512["machine"], "cpu_model": "Wide CPU", "cpu_flags": {"avx512f": True}, "bf16": True}
    paths = [tmp_path / "avx512.json", tmp_path / "avx2.json"]
    for path, report in zip(paths, (avx512, _report(1.25))):
        path.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\n")
    text = update_readme(paths, readme).read_text()
    wide, narrow = text.index("on Wide CPU (2 cores; avx512f)"), text.index("on Test CPU (2 cores; avx2)")
    assert wide < text.index("| 2.00x |") < narrow < text.index("| 1.25x |")  # each table after its machine
    assert text.count("| case | what |") == 2 and text.count("Generated by") == 1 and "old" not in text


def test_machine_line_names_the_decoding_kernels_a_report_records():
    report = _report()
    assert "decoding products" not in machine_line(report)  # older reports lack the keys
    report["machine"].update(
        fp32_linear="BLAS",
        decoding_products="the thin kernel up to 128 rows",
        step_attention="the fused kernel up to 1024 keys",
        decoder_steps="fused up to 128 rows",
    )
    assert (
        "its decoding products the thin kernel up to 128 rows, step attention the fused kernel up to "
        "1024 keys, decoder steps fused up to 128 rows)." in machine_line(report)
    )
    report["machine"]["causal_attention"] = "compiled blocks from 48 queries"
    assert "decoder steps fused up to 128 rows; causal attention compiled blocks from 48 queries)." in machine_line(
        report
    )


def test_machine_line_of_a_gpu_run_names_the_gpu_its_host_and_the_device_peaks():
    report = _report()
    report["machine"].update(gpu="NVIDIA H200", device="cuda", fp32_linear="BLAS", decoding_products="F.linear")
    report["gemm_gflops"]["peak"] = {"bf16": 757313.0, "fp32": 50966.0}
    line = machine_line(report)
    assert "on an NVIDIA H200 (host: Test CPU, 2 cores, 2 threads)" in line
    assert "bf16 757 TFLOP/s, fp32 51 TFLOP/s" in line
    assert "decoding products" not in line and "oneDNN" not in line  # the CPU's kernels do not run there


def test_readme_from_a_missing_report_names_it_and_writes_nothing(tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    assert main(["bench", "--readme", str(missing)]) == 2
    assert f"no bench report at {missing}" in capsys.readouterr().err


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
    gemm = report["gemm_gflops"]
    assert len(gemm["samples"]) == 2  # before the case and after it
    assert gemm["peak"]["fp32"] == max(sample["fp32"] for sample in gemm["samples"]) > 0
    rows = fused_decoder.max_rows()
    assert machine["decoder_steps"] == (f"fused up to {rows} rows" if rows else "layer by layer")
    queries = blocks_min_queries()
    assert machine["causal_attention"] == (
        f"compiled blocks from {queries} queries" if queries else "SDPA's causal mode"
    )
    assert machine["allocator"] == (memory.loaded_allocator() or "glibc")  # main(argv) starts no process
    (case,) = report["cases"]
    ours = case["sides"]["attnlab"]
    assert 0 < ours["min_ms"] <= ours["median_ms"] and ours["flops_per_call"] > 0 and ours["mfu"] > 0
    assert ours["mfu"] == pytest.approx(ours["gflops"] / gemm["peak"]["fp32"])
    assert 0 <= case["noise"]["foreign_share_median"] <= 1 and case["ratio"] == pytest.approx(ratio, abs=0.01)


def test_the_console_command_runs_the_suite_under_tcmalloc_where_installed(tmp_path: Path):
    out = tmp_path / "bench.json"
    case = ["--sizes", "tiny", "--only", "attn-fwd-32", "--repeats", "1", "--threads", "1", "--out", str(out)]
    environment = {key: value for key, value in os.environ.items() if key not in ("LD_PRELOAD", memory.RELAUNCHED)}
    command = [sys.executable, "-m", "attnlab.cli.main", "bench", *case]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)
    assert done.returncode == 0, done.stderr
    expected = "tcmalloc" if memory.find_allocator("tcmalloc") else "glibc"
    assert json.loads(out.read_text())["machine"]["allocator"] == expected
    system = subprocess.run([*command, "--allocator", "system"], capture_output=True, text=True, env=environment)
    assert system.returncode == 0, system.stderr
    assert json.loads(out.read_text())["machine"]["allocator"] == "glibc"


def test_int8_linear_of_the_decoding_engine_is_counted():
    from attnlab.inference import quantized

    if not quantized.available():
        pytest.skip("this PyTorch build has no dynamic int8 linear")
    x, w = torch.randn(3, 5, 16), torch.randn(24, 16)
    weights = quantized.QuantizedWeights(rows=15)
    with torch.no_grad():
        assert count_flops(lambda: weights.linear(x, w, None)) == 2 * 15 * 16 * 24


def test_ct2_cases_are_selected_by_prefix():
    from benchmarks.suite import SIZES, all_cases, select

    cases = all_cases(SIZES["tiny"], bf16=False)
    names = [c.name for c in select(cases, ["ct2"], quick=False)]
    assert names == ["ct2-greedy-fp32", "ct2-greedy-int8", "ct2-beam2-fp32", "ct2-beam2-int8"]
    assert [c.name for c in select(cases, ["ct2-greedy"], quick=False)] == names[:2]
    assert "ct2-greedy-fp32" not in [c.name for c in select(cases, ["greedy"], quick=False)]


def test_ct2_case_checks_tokens_against_hf_then_times_both_sides():
    pytest.importorskip("ctranslate2")
    pytest.importorskip("sentencepiece")
    from benchmarks.suite import SIZES, all_cases, run_suite, select

    tiny = SIZES["tiny"]
    cases = select(all_cases(tiny, bf16=False), ["ct2-beam2-fp32", "ct2-beam2-int8"], quick=False)
    assert all(case.own_process for case in cases)
    report = run_suite(cases, torch.device("cpu"), repeats=2, gemm_n=tiny.gemm_n, sizes=tiny)
    fp32, row = report["cases"]
    # Each ran in a fresh interpreter that loaded ctranslate2 first (its own OpenMP runtime).
    assert fp32["ctranslate2_before_torch"] and row["ctranslate2_before_torch"]
    # Our engine and CT2, given the same weights, make HF Marian's translation token for token.
    assert fp32["tokens"]["match"] and fp32["tokens"]["must_match"] == ["ours fp32", "CT2 fp32"]
    assert fp32["tokens"]["peers"]["CT2 fp32"]["differing_tokens"] == 0
    tokens = row["tokens"]  # the int8 case holds CT2 int8 only: one CTranslate2 translator per process
    assert tokens["match"] and tokens["mismatched"] == [] and tokens["must_match"] == ["ours fp32"]
    assert tokens["peers"]["ours fp32"]["differing_tokens"] == 0
    assert set(tokens["peers"]) == {"ours fp32", "ours int8", "CT2 int8"}
    assert list(row["sides"]) == ["attnlab int8", "CTranslate2 int8"] and row["ratio"] > 0
    ours, ct2 = row["sides"]["attnlab int8"], row["sides"]["CTranslate2 int8"]
    assert ours["rate"] > 0 and ours["flops_per_call"] > 0 and ours["flops_counted"]
    assert ct2["flops_per_call"] == ours["flops_per_call"] and not ct2["flops_counted"]


def test_token_mismatch_is_reported_not_ignored():
    from benchmarks.ctranslate2_bar import token_check

    from attnlab.cli.bench import token_line

    same = torch.tensor([[4, 5, 6], [7, 8, 9]])
    peers = {"HF fp32": lambda: same, "ours fp32": lambda: same, "CT2 fp32": lambda: same.flip(1)}
    check = token_check(peers, must_match=("ours fp32", "CT2 fp32"))
    assert not check["match"] and check["mismatched"] == ["CT2 fp32"]
    assert check["peers"]["CT2 fp32"] == {"differing_tokens": 4, "differing_sentences": 2, "first_differing_step": 0}
    assert token_line(check).startswith("TOKEN MISMATCH: CT2 fp32 differ")


def test_a_missing_package_skips_its_cases_with_one_line():
    from benchmarks.suite import SIZES, Case, all_cases, runnable

    cases = all_cases(SIZES["tiny"], bf16=False)[:2]
    absent = [Case(f"x-{i}", "", "ms", "fp32", False, lambda device: None, needs="no_such_package") for i in range(2)]
    kept, lines = runnable(cases + absent, torch.device("cpu"))
    assert kept == cases
    assert lines == ["no_such_package is not installed: x-0, x-1 skipped (pip install no_such_package)"]


def test_causal_cases_take_the_faster_of_two_pytorch_peers(tmp_path: Path):
    """nn.MultiheadAttention builds a full mask for causal calls; the SDPA layer is PyTorch's fastest
    causal attention, and the ratio is against whichever of them was faster."""
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--sizes",
        "tiny",
        "--only",
        "attn-causal-fwd",
        "--repeats",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    (case,) = json.loads(out.read_text())["cases"]
    assert case["case"] == "attn-causal-fwd-64"
    assert list(case["sides"]) == ["attnlab", "nn.MultiheadAttention", "SDPA layer"]
    medians = {name: side["median_ms"] for name, side in case["sides"].items() if name != "attnlab"}
    assert case["peer"] == min(medians, key=medians.get)
    assert case["ratio"] == pytest.approx(medians[case["peer"]] / case["sides"]["attnlab"]["median_ms"])


def test_every_report_of_a_run_takes_mfu_against_its_fastest_peak_so_far():
    """One GEMM sample before the cases and one after each; a partial report's rows and its peak agree."""
    from benchmarks.suite import Built, Case, run_suite

    x, w = torch.randn(32, 64), torch.randn(64, 64)
    case = Case(
        "mm",
        "a small product",
        "ms",
        "fp32",
        True,
        lambda device: Built({"ours": lambda: x @ w, "peer": lambda: x @ w}),
    )
    partials = []
    final = run_suite(
        [case, case],
        torch.device("cpu"),
        repeats=2,
        gemm_n=128,
        report=lambda row, partial: partials.append(json.loads(json.dumps(partial))),
    )
    assert len(final["gemm_gflops"]["samples"]) == 3 and [len(p["cases"]) for p in partials] == [1, 2]
    for report in [*partials, final]:
        peak = report["gemm_gflops"]["peak"]["fp32"]
        assert peak == max(sample["fp32"] for sample in report["gemm_gflops"]["samples"])
        for row in report["cases"]:
            for side in row["sides"].values():
                assert side["mfu"] == pytest.approx(side["gflops"] / peak)
