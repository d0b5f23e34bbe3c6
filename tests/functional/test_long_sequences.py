"""Long sequences: one attention call over N keys in bounded memory, with and without weights.

The peak is measured in a fresh interpreter (Linux's ``VmHWM``, reset after the inputs are made),
so what the test process already holds does not count. Without weights the fused kernel never
forms the ``(H, N, N)`` scores; with head-averaged weights memory holds the ``(N, N)`` average and
one block of scores, not every head's map nor a second copy of the average.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnlab.functional import attention
from attnlab.functional.kernels import Thresholds, attention_weights, blockwise, set_thresholds

HEADS, HEAD_DIM = 8, 64
FLOAT32 = 4
MIB = 1 << 20
DEFAULT_CHUNK = Thresholds().weights_chunk_elements

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak RSS is read from Linux's /proc/self/status"
)

CHILD = f"""
import sys
from pathlib import Path
import torch
from attnlab.functional import attention
from attnlab.functional.kernels import Thresholds, set_thresholds

def status_mib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

torch.set_num_threads(1)
n, weights, chunk = int(sys.argv[1]), sys.argv[2] == "averaged", int(sys.argv[3])
set_thresholds(Thresholds(weights_chunk_elements=chunk))  # not a table measured on this machine
average = 1 if weights else None
g = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(1, {HEADS}, n, {HEAD_DIM}, generator=g) for _ in range(3))
with torch.no_grad():
    attention(q[..., :64, :], k[..., :64, :], v[..., :64, :], need_weights=weights, weights_average_dim=average)
    Path("/proc/self/clear_refs").write_text("5")
    base = status_mib("VmRSS")
    context, w = attention(q, k, v, need_weights=weights, weights_average_dim=average)
peak = status_mib("VmHWM") - base
assert context.shape == (1, {HEADS}, n, {HEAD_DIM}), context.shape
assert (w is None) if not weights else w.shape == (1, n, n), None if w is None else w.shape
print(peak)
"""


def peak_mib_of_one_call(n: int, weights: str, chunk_elements: int) -> float:
    """Peak RSS (MiB) of one ``attention`` call on ``(1, H, n, d)`` fp32 inputs, above the inputs,
    with blocks of about ``chunk_elements`` scores."""
    # glibc hands large freed blocks back at once, so the peak is that of live memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-c", CHILD, str(n), weights, str(chunk_elements)]
    out = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip().splitlines()[-1])


def context_mib(n: int) -> float:
    return HEADS * n * HEAD_DIM * FLOAT32 / MIB


def check_no_weights(n: int) -> None:
    scores_mib = HEADS * n * n * FLOAT32 / MIB  # what one materialised (H, N, N) score matrix takes
    peak = peak_mib_of_one_call(n, "none", DEFAULT_CHUNK)
    bound = 64 + 2 * context_mib(n)
    assert peak < bound, f"N={n}: peak {peak:.0f} MiB, expected < {bound:.0f} (the scores alone: {scores_mib:.0f})"


def check_averaged_weights(n: int, chunk_elements: int) -> None:
    average_mib = n * n * FLOAT32 / MIB  # the (1, N, N) result itself
    peak = peak_mib_of_one_call(n, "averaged", chunk_elements)
    # The result, a block of scores with its softmax and head mean (a few chunks), the context,
    # and slack; every head's map would be H times the result, and a second copy of it 2x.
    bound = average_mib + 4 * chunk_elements * FLOAT32 / MIB + 2 * context_mib(n) + 32
    assert peak < bound, f"N={n}: peak {peak:.0f} MiB, expected < {bound:.0f} (the averaged map: {average_mib:.0f})"


@needs_proc
def test_a_4k_call_without_weights_never_forms_the_scores():
    check_no_weights(4096)


@needs_proc
def test_a_4k_call_with_averaged_weights_holds_the_average_once():
    check_averaged_weights(4096, chunk_elements=1 << 20)  # small blocks: the result dominates the peak


@needs_proc
@pytest.mark.slow
def test_a_16k_call_without_weights_never_forms_the_scores():
    check_no_weights(16384)


@needs_proc
@pytest.mark.slow
def test_a_16k_call_with_averaged_weights_holds_the_average_once():
    check_averaged_weights(16384, DEFAULT_CHUNK)


def _reference(q, k, v, mask, is_causal):
    """softmax(Q K^T / sqrt(d) + M) V in float64 (Vaswani et al., 2017, Eq. 1); masked rows give 0.
    Causal: the last query sees the last key."""
    q, k, v = q.double(), k.double(), v.double()
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    lq, lk = scores.shape[-2:]
    allowed = torch.ones(lq, lk, dtype=torch.bool)
    allowed = allowed.tril(lk - lq) if is_causal else allowed
    if mask is not None:
        allowed = allowed & mask
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.nan_to_num(scores.softmax(-1), nan=0.0)
    return weights @ v, weights


@pytest.fixture
def blocks_of_three_queries():
    """Blocks of three queries, so an 11-query call takes four blocks, the last one short."""
    previous = set_thresholds(Thresholds(weights_chunk_elements=2 * HEADS * 13 * 3))
    yield
    set_thresholds(previous)


@pytest.mark.usefixtures("blocks_of_three_queries")
@pytest.mark.parametrize("average", [None, 1])
@pytest.mark.parametrize("masking", ["none", "padding", "causal"])
def test_weights_written_block_by_block_equal_the_formula(average, masking):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, HEADS, n, 16, generator=g) for n in (11, 13, 13))
    mask, is_causal = None, masking == "causal"
    if masking == "padding":
        mask = torch.ones(2, 1, 1, 13, dtype=torch.bool)
        mask[1, ..., -5:] = False
    ref_out, ref_w = _reference(q, k, v, mask, is_causal)
    ref_w = ref_w if average is None else ref_w.mean(average)
    with torch.no_grad():  # the path that writes each block into one result
        out, w = blockwise(q, k, v, mask, is_causal=is_causal, need_weights=True, weights_average_dim=average)
        beside = attention_weights(q, k, mask=mask, is_causal=is_causal, average_dim=average)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, **tol)
    torch.testing.assert_close(w.double(), ref_w, **tol)
    torch.testing.assert_close(beside.double(), ref_w, **tol)


@pytest.mark.usefixtures("blocks_of_three_queries")
def test_a_public_call_with_averaged_weights_matches_torch():
    mha = torch.nn.MultiheadAttention(HEADS * 8, HEADS, batch_first=True).eval()
    x = torch.randn(2, 11, HEADS * 8, generator=torch.Generator().manual_seed(2))
    q, k, v = (
        torch.nn.functional.linear(x, w, b).view(2, 11, HEADS, 8).transpose(1, 2)
        for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3))
    )
    with torch.no_grad():
        _, expected = mha(x, x, x, need_weights=True, average_attn_weights=True)
        _, ours = attention(q, k, v, need_weights=True, weights_average_dim=1)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
