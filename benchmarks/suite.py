"""The benchmark suite behind ``attnlab bench``: every case ours against its peer, with MFU.

A case builds one closure per side (ours first, then one or more peers with the same weights and
inputs), runs them interleaved in this process (A B A B ...) after a warm-up, and reports the
median and minimum wall time of each side, the ratio of the fastest peer's median to ours (> 1:
ours is faster) and each side's MFU: the FLOPs of one call (``benchmarks.flops.count_flops``)
over its median time, divided by the rate of a large matmul of the case's dtype measured in the
same run. Rounds in which other processes took more than ``MAX_FOREIGN`` of the cores are dropped
when at least two quiet rounds remain; the share they took is reported as the noise.

The ``ct2-*`` cases put attnlab's decoding (fp32, and ``--precision int8``'s engine) beside
CTranslate2 (``benchmarks.ctranslate2_bar``) on CPU, each in a fresh interpreter that imports
ctranslate2 first (``measure_in_own_process``); before timing, each case checks that ours (and CT2,
in the fp32 cases) make Hugging Face Marian's tokens, and reports the check in its row (``tokens``).
CT2 runs in C++, out of the FLOP counter's sight: its FLOPs are ours (the same model making the
same tokens). Cases whose package is missing are skipped (``runnable``).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from attnlab.functional.kernels import fused_step, onednn, thin
from attnlab.functional.kernels.causal import blocks_min_queries
from attnlab.functional.kernels.linear import uses_onednn
from attnlab.functional.kernels.thresholds import cpu_flags, cpu_model
from attnlab.inference import fused_decoder
from attnlab.training.memory import loaded_allocator
from benchmarks.common import matmul_gflops, timed
from benchmarks.flops import count_flops, mfu
from benchmarks.translation import synced

MAX_FOREIGN = 0.25  # drop rounds in which other processes used more than this share of all cores
GPU_GEMM_N = 8192  # the GPU's MFU denominator: the rate of an 8192-square product
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


@dataclass(frozen=True)
class Sizes:
    """The sizes of every case; ``SIZES["tiny"]`` is for tests only."""

    attn_batch: int = 8
    attn_heads: int = 8
    attn_head_dim: int = 64
    attn_lengths: tuple[int, ...] = (512, 2048)
    attn_causal_length: int = 1024
    preset: str = "base"  # Transformer
    vocab: int = 8000
    batch: int = 8
    src_len: int = 32
    new_tokens: int = 64
    beam: int = 5
    vit: str = "vit_small_patch16_224"
    vit_infer_batch: int = 16
    vit_train_batch: int = 8
    gemm_n: int = 2048


SIZES = {
    "full": Sizes(),
    "tiny": Sizes(
        attn_batch=2,
        attn_heads=2,
        attn_head_dim=16,
        attn_lengths=(32, 64),
        attn_causal_length=64,
        preset="tiny",
        vocab=200,
        batch=2,
        src_len=8,
        new_tokens=4,
        beam=2,
        vit="vit_digits_patch2_8",
        vit_infer_batch=4,
        vit_train_batch=4,
        gemm_n=256,
    ),
}


@dataclass
class Built:
    """The closures of one case: ``sides`` maps a label to one call, ours first."""

    sides: dict[str, Callable[[], object]]
    work: int | None = None  # items (tokens, images) one call makes; None: report milliseconds
    tokens: dict | None = None  # a token check made while building (``ctranslate2_bar.token_check``)
    flops_of_ours: tuple[str, ...] = ()  # sides the FLOP counter cannot see, doing ours' work


@dataclass(frozen=True)
class Case:
    """One row of the table: a name for ``--only``, what it runs, its unit and dtype, and its builder."""

    name: str
    what: str
    unit: str  # "ms", "tok/s" or "img/s"
    dtype: str  # "fp32", "bf16" or "int8"
    quick: bool
    build: Callable[[torch.device], Built] = field(repr=False)
    needs: str | None = None  # a package the case imports, beyond attnlab's
    cpu_only: bool = False
    own_process: bool = False  # measured in a fresh interpreter (``measure_in_own_process``)


# --- the cases ------------------------------------------------------------------------------------


def _attention(sizes: Sizes, n: int, backward: bool, causal: bool = False) -> Callable[[torch.device], Built]:
    """Self-attention layers; causal ones also against the same projections around SDPA's causal
    mode, PyTorch's fastest causal attention. ``nn.MultiheadAttention`` computes causal attention
    under a full mask, so its MFU there counts the model's FLOPs (ours), not the masked half it
    computes anyway."""
    from benchmarks.attention import make_case

    dims = (sizes.attn_batch, sizes.attn_heads, sizes.attn_head_dim)
    peers = {"attnlab": "attnlab", "nn.MultiheadAttention": "torch"}
    if causal:
        peers["SDPA layer"] = "sdpa"

    def build(device: torch.device) -> Built:
        sides = {name: make_case(peer, n, causal, backward, *dims, device=device) for name, peer in peers.items()}
        return Built(sides, flops_of_ours=("nn.MultiheadAttention",) if causal else ())

    return build


def _captured(name: str, peers: dict, tokens: int, *args, **kwargs) -> Built:
    """A ``measure`` for ``benchmarks.translation``'s builders: keep the closures, time nothing."""
    return Built(dict(peers), tokens)


def _translation(sizes: Sizes, kind: str, bf16: bool) -> Callable[[torch.device], Built]:
    from attnlab.models.transformer import TransformerConfig
    from benchmarks import translation

    def build(device: torch.device) -> Built:
        config = TransformerConfig.from_preset(
            sizes.preset, src_vocab_size=sizes.vocab, tgt_vocab_size=sizes.vocab, share_embeddings=True
        )
        common = dict(batch=sizes.batch, repeats=0, device=device, bf16=bf16, measure=_captured)
        if kind == "train":
            return translation.bench_training(config, length=sizes.src_len, **common)
        beam = 1 if kind == "greedy" else sizes.beam
        return translation.bench_decoding(
            config, beam=beam, src_len=sizes.src_len, new_tokens=sizes.new_tokens, **common
        )

    return build


def _vit(sizes: Sizes, mode: str, bf16: bool) -> Callable[[torch.device], Built]:
    from attnlab.models.vit import ViT, vit_config
    from attnlab.models.vit_interop import vit_to_hf
    from benchmarks.vision import make_step

    def build(device: torch.device) -> Built:
        torch.manual_seed(0)
        config = vit_config(sizes.vit, dropout=0.0)
        ours = ViT(config).to(device)
        hf = vit_to_hf(ours, attn_implementation="sdpa").to(device)
        batch = sizes.vit_train_batch if mode == "train" else sizes.vit_infer_batch
        images = torch.randn(batch, config.in_channels, config.image_size, config.image_size, device=device)
        train = mode == "train"
        sides = {
            "attnlab": make_step(ours, images, train, bf16, hf=False),
            "HF ViT (SDPA)": make_step(hf, images, train, bf16, hf=True),
        }
        if timm_status() == "used":
            sides["timm ViT"] = make_step(_timm_vit(ours).to(device), images, train, bf16, hf=False)
        return Built(sides, batch)

    return build


def _ct2(sizes: Sizes, beam: int, precision: str) -> Callable[[torch.device], Built]:
    from attnlab.models.transformer import TransformerConfig
    from benchmarks import ctranslate2_bar as bar

    def build(device: torch.device) -> Built:
        config = TransformerConfig.from_preset(
            sizes.preset, src_vocab_size=sizes.vocab, tgt_vocab_size=sizes.vocab, share_embeddings=True
        )
        model, hf, src = bar.setup(config, sizes.batch, sizes.src_len)
        precisions = ("fp32",) if precision == "fp32" else ("fp32", precision)
        kind = next(kind for kind, name in bar.PRECISIONS.items() if name == precision)
        # One CTranslate2 translator per process: a second one's thread team slows the first even
        # once it is deleted (docs/results/ctranslate2.md), so CT2 fp32's tokens are checked in the fp32 cases.
        with tempfile.TemporaryDirectory() as tmp:  # the translator holds what it loaded
            ct2 = bar.translators(hf, Path(tmp), (kind,), torch.get_num_threads())
        peers = bar.searches(model, hf, ct2, src, beam, sizes.new_tokens, precisions)
        # fp32 must make HF's tokens (the conversion and our engine are right); int8 is reported.
        tokens = bar.token_check(peers, must_match=("ours fp32", "CT2 fp32") if precision == "fp32" else ("ours fp32",))
        ours, theirs = ("attnlab", "CTranslate2") if precision == "fp32" else ("attnlab int8", "CTranslate2 int8")
        sides = {ours: peers[f"ours {precision}"], theirs: peers[f"CT2 {precision}"]}
        return Built(sides, sizes.batch * sizes.new_tokens, tokens=tokens, flops_of_ours=(theirs,))

    return build


def timm_status() -> str:
    """ "used" when timm imports here, else why not (timm imports torchvision, which attnlab never installs)."""
    try:
        import timm  # noqa: F401
    except ImportError as error:
        return f"not used: {error}"
    return "used"


def _timm_vit(ours):
    """timm's ``VisionTransformer`` with the sizes and a copy of the weights of our ViT."""
    from timm.models.vision_transformer import VisionTransformer

    from attnlab.models.vit_interop import attnlab_to_timm

    c = ours.config
    model = VisionTransformer(
        img_size=c.image_size, patch_size=c.patch_size, in_chans=c.in_channels, num_classes=c.num_classes,
        embed_dim=c.embed_dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio,
    )  # fmt: skip
    model.load_state_dict(attnlab_to_timm(ours.state_dict()))
    return model


def all_cases(sizes: Sizes, bf16: bool) -> list[Case]:
    """Every case of the suite in the order they run; bf16 ones only where ``bf16`` is true."""
    cases = []
    attn = f"B={sizes.attn_batch} H={sizes.attn_heads} d={sizes.attn_head_dim}"
    for i, n in enumerate(sizes.attn_lengths):
        for backward, mode in ((False, "fwd"), (True, "fwdbwd")):
            quick = i == 0 or not backward
            cases.append(Case(f"attn-{mode}-{n}", f"self-attention {mode} {attn} N={n}", "ms", "fp32", quick,
                              _attention(sizes, n, backward)))  # fmt: skip
    n = sizes.attn_causal_length
    for backward, mode in ((False, "fwd"), (True, "fwdbwd")):
        cases.append(Case(f"attn-causal-{mode}-{n}", f"causal self-attention {mode} {attn} N={n}", "ms", "fp32", True,
                          _attention(sizes, n, backward, causal=True)))  # fmt: skip
    model = f"{sizes.preset} Transformer, batch {sizes.batch}"
    for dtype in ("fp32", "bf16") if bf16 else ("fp32",):
        tag, on = ("" if dtype == "fp32" else "-bf16"), dtype == "bf16"
        cases += [
            Case("transformer-train" + tag, f"{model} x {sizes.src_len} tokens, fwd+bwd+Adam", "tok/s", dtype, True,
                 _translation(sizes, "train", on)),
            Case("greedy" + tag, f"{model}, {sizes.new_tokens} new tokens", "tok/s", dtype, True,
                 _translation(sizes, "greedy", on)),
            Case(f"beam{sizes.beam}" + tag, f"{model}, {sizes.new_tokens} new tokens", "tok/s", dtype, True,
                 _translation(sizes, "beam", on)),
        ]  # fmt: skip
    for search, beam in (("greedy", 1), (f"beam{sizes.beam}", sizes.beam)):
        for precision in ("fp32", "int8"):
            what = f"{model}, {sizes.new_tokens} new tokens, vs CTranslate2 {precision}"
            cases.append(Case(f"ct2-{search}-{precision}", what, "tok/s", precision, False,
                              _ct2(sizes, beam, precision), needs="ctranslate2", cpu_only=True,
                              own_process=True))  # fmt: skip
    for dtype in ("fp32", "bf16") if bf16 else ("fp32",):
        tag, on = ("" if dtype == "fp32" else "-bf16"), dtype == "bf16"
        for mode, batch in (("train", sizes.vit_train_batch), ("infer", sizes.vit_infer_batch)):
            what = f"{sizes.vit}, batch {batch}" + (", fwd+bwd+SGD" if mode == "train" else "")
            cases.append(Case(f"vit-{mode}{tag}", what, "img/s", dtype, True, _vit(sizes, mode, on)))
    return cases


def select(cases: list[Case], only: list[str] | None, quick: bool) -> list[Case]:
    """The cases ``--only`` names (a name or a prefix such as ``vit``), else all or the quick ones.

    Raises:
        ValueError: a name that matches no case; the message lists the names.
    """
    if not only:
        return [c for c in cases if c.quick or not quick]
    names = [c.name for c in cases]

    def matches(name: str) -> list[str]:  # the case of that name, else the cases it is a prefix of
        return [name] if name in names else [n for n in names if n.startswith(name + "-")]

    unknown = [o for o in only if not matches(o)]
    if unknown:
        raise ValueError(f"unknown case {', '.join(map(repr, unknown))}; the cases are: {', '.join(names)}")
    chosen = {n for o in only for n in matches(o)}
    return [c for c in cases if c.name in chosen]


def runnable(cases: list[Case], device: torch.device) -> tuple[list[Case], list[str]]:
    """The cases that can run here, and one line per reason some cannot (a missing package, the device)."""
    missing = {c.needs for c in cases if c.needs and importlib.util.find_spec(c.needs) is None}
    off = [c for c in cases if c.needs in missing or (c.cpu_only and device.type != "cpu")]
    lines = []
    for package in sorted(missing):
        names = [c.name for c in off if c.needs == package]
        lines.append(f"{package} is not installed: {', '.join(names)} skipped (pip install {package})")
    on_cpu = [c.name for c in off if c.needs not in missing]
    if on_cpu:
        lines.append(f"--device {device.type}: {', '.join(on_cpu)} run on CPU only, skipped")
    return [c for c in cases if c not in off], lines


# --- measuring ------------------------------------------------------------------------------------


def interleaved(sides: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict:
    """Run the sides A B A B ...; per side the wall and CPU times of the quiet rounds, and the noise."""
    for _ in range(warmup):
        for fn in sides.values():
            fn()
    rounds = [{name: timed(fn) for name, fn in sides.items()} for _ in range(repeats)]
    # /proc/stat counts in clock ticks (10 ms): the share is coarse for short calls; never above all cores.
    foreign = [min(1.0, max(sample[2] for sample in r.values())) for r in rounds]
    quiet = [r for r, share in zip(rounds, foreign) if share <= MAX_FOREIGN]
    kept = quiet if len(quiet) >= 2 else rounds
    return {
        "times": {name: [r[name][0] for r in kept] for name in sides},
        "cpu": {name: [r[name][1] for r in kept] for name in sides},
        "noise": {
            "foreign_share_median": statistics.median(foreign),
            "foreign_share_max": max(foreign),
            "rounds": repeats,
            "rounds_kept": len(kept),
        },
    }


def peak_gflops(dtype: str, device: torch.device, n: int) -> float:
    """The MFU denominator of a case's dtype (``"fp32"``, ``"bf16"`` or ``"int8"``)."""
    if dtype == "int8":
        return int8_gemm_gflops(n)
    return gemm_gflops(DTYPES[dtype], device, n)


@torch.no_grad()
def int8_gemm_gflops(n: int) -> float:
    """The rate (billion multiply-adds x 2 per second) of the int8 engine's dynamic linear on a
    square matmul (CPU, best of 5): the int8 cases' MFU denominator."""
    from attnlab.inference.quantized import QuantizedWeights

    weights = QuantizedWeights(rows=n)  # its first, untimed call quantises and packs the weight once
    return matmul_gflops(n, product=weights.linear)


def gemm_gflops(dtype: torch.dtype, device: torch.device, n: int) -> float:
    """The rate of a large square matmul now (best of 5): MFU's denominator. On CPU, the faster
    of the BLAS's (``torch.matmul``) and, in fp32, oneDNN's (which attnlab's linear layers take
    where it is the faster one): the machine's rate, not one library's."""
    if device.type == "cpu":
        rates = [matmul_gflops(n, dtype)]
        if dtype == torch.float32 and onednn.available():
            rates.append(matmul_gflops(n, dtype, product=onednn.matmul_t))
        return max(rates)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    run = synced(lambda: a @ b, device)
    run()
    return 2 * n**3 / min(timed(run)[0] for _ in range(5)) / 1e9


def measure_case(case: Case, device: torch.device, repeats: int, peaks: dict[str, float], warmup: int = 0) -> dict:
    """Build, count (the first call of each side, which also warms it up) and time one case; its row."""
    built = case.build(device)
    sides = {name: synced(fn, device) for name, fn in built.sides.items()}
    flops = {name: count_flops(fn) for name, fn in sides.items()}
    ours = next(iter(sides))
    flops.update({name: flops[ours] for name in built.flops_of_ours})
    timing = interleaved(sides, repeats, warmup)
    result = {
        "case": case.name,
        "what": case.what,
        "unit": case.unit,
        "dtype": case.dtype,
        "work_per_call": built.work,
        "noise": timing["noise"],
        "sides": {},
    }
    if built.tokens is not None:
        result["tokens"] = built.tokens
    for name in sides:
        times = timing["times"][name]
        median = statistics.median(times)
        result["sides"][name] = {
            "median_ms": 1e3 * median,
            "min_ms": 1e3 * min(times),
            "median_cpu_ms": 1e3 * statistics.median(timing["cpu"][name]),
            "flops_per_call": flops[name],
            "gflops": flops[name] / median / 1e9,
            "mfu": mfu(flops[name], median, peaks[case.dtype]),
            "rate": built.work / median if built.work else None,
            "flops_counted": name not in built.flops_of_ours,  # False: ours' count stands for it
        }
    ours, *peers = result["sides"]
    result["ours"] = ours
    result["peer"] = min(peers, key=lambda p: result["sides"][p]["median_ms"])
    them, us = result["sides"][result["peer"]], result["sides"][ours]
    result["ratio"] = them["median_ms"] / us["median_ms"]
    # This process's CPU seconds: steadier than wall time while other processes compete for the cores.
    result["cpu_time_ratio"] = them["median_cpu_ms"] / us["median_cpu_ms"] if us["median_cpu_ms"] else None
    del built, sides
    gc.collect()
    return result


# ctranslate2 first: torch puts its OpenMP runtime in the process's global symbol scope, and a
# ctranslate2 loaded after it would bind its OpenMP calls to torch's runtime instead of its own.
_CHILD = "import sys, ctranslate2; from benchmarks.suite import child; child(sys.argv[1])"


def measure_in_own_process(
    case: Case, sizes: Sizes, device: torch.device, repeats: int, peaks: dict[str, float], warmup: int = 0
) -> dict:
    """``measure_case`` in a fresh interpreter that imports ctranslate2 before torch: each engine
    with its own OpenMP runtime, and no thread teams left by other cases."""
    spec = {"case": case.name, "sizes": dataclasses.asdict(sizes), "device": str(device), "repeats": repeats,
            "peaks": peaks, "warmup": warmup, "threads": torch.get_num_threads()}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(spec)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"case {case.name} failed in its own process:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(spec_json: str) -> None:
    """The fresh interpreter's side of ``measure_in_own_process``: measure one case, print its row."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    fields = {**spec["sizes"], "attn_lengths": tuple(spec["sizes"]["attn_lengths"])}
    device = torch.device(spec["device"])
    (case,) = [c for c in all_cases(Sizes(**fields), bf16_supported(device)) if c.name == spec["case"]]
    row = measure_case(case, device, spec["repeats"], spec["peaks"], spec["warmup"])
    modules = list(sys.modules)
    row["ctranslate2_before_torch"] = modules.index("ctranslate2") < modules.index("torch")
    print(json.dumps(row))


# --- the machine and the report -------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> dict:
    """The CPU (model, flags that matter for fp32 and bf16 kernels, cores), threads and versions."""
    import transformers

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model() or platform.processor() or platform.machine(),
        "cpu_flags": {flag: flag in flags for flag in CPU_FLAGS},
        "cores": os.cpu_count(),
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16": bf16_supported(device),
        "fp32_linear": "oneDNN" if uses_onednn(device) else "BLAS",  # attnlab's linear layers
        "decoding_products": decoding_products(device),
        "step_attention": step_attention_kernel(device),
        "decoder_steps": decoder_steps(device),
        "causal_attention": causal_attention(device),
        "allocator": loaded_allocator() or "glibc",
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "timm": timm_status(),
        "ctranslate2": _version("ctranslate2"),
        "python": platform.python_version(),
    }


def decoding_products(device: torch.device) -> str:
    """The kernel of the decoding engine's fp32 products by packed weights (``inference.packed``)."""
    if device.type != "cpu":
        return "F.linear"
    if rows := thin.max_rows():
        return f"the thin kernel up to {rows} rows"
    return "oneDNN packed" if onednn.available() else "F.linear"


def step_attention_kernel(device: torch.device) -> str:
    """The kernel of the decoding engine's fp32 step attention (``kernels.step.step_attention``)."""
    keys = fused_step.max_keys()
    if device.type == "cpu" and keys:
        return f"the fused kernel up to {keys} keys"
    return "PyTorch's"


def decoder_steps(device: torch.device) -> str:
    """How the decoding engine runs a step: fused (``inference.fused_decoder``) up to a row count, or layer by layer."""
    rows = fused_decoder.max_rows() if device.type == "cpu" else 0
    return f"fused up to {rows} rows" if rows else "layer by layer"


def causal_attention(device: torch.device) -> str:
    """The kernel of fp32 causal self-attention (``kernels.causal``): the compiled blocks from a
    query count, or SDPA's causal mode."""
    queries = blocks_min_queries() if device.type == "cpu" else 0
    return f"compiled blocks from {queries} queries" if queries else "SDPA's causal mode"


def _version(package: str) -> str | None:
    """The installed version of ``package``, None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def bf16_supported(device: torch.device) -> bool:
    """bf16 instructions on this device (CPU: oneDNN's bf16 kernels)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return onednn.bf16_available()


def run_suite(
    cases: list[Case],
    device: torch.device,
    repeats: int,
    gemm_n: int,
    warmup: int = 0,
    report: Callable[[dict, dict], None] = lambda row, partial: None,
    sizes: Sizes | None = None,
) -> dict:
    """Measure the GEMM rates, then every case (``warmup`` untimed rounds after the counted first
    call), each followed by the GEMM rates again; the whole report but the machine. ``report``
    sees each row as it is done, with the report so far (MFU against the fastest GEMM measurement
    yet), which a long run can save as it goes. Cases marked ``own_process`` run in a fresh
    interpreter when ``sizes`` (theirs) is given."""
    needed = sorted({c.dtype for c in cases} | {"fp32"})
    if device.type == "cuda":  # a GPU reaches its rate only on products far larger than a CPU's
        gemm_n = max(gemm_n, GPU_GEMM_N)
    start = time.perf_counter()
    samples = [{d: peak_gflops(d, device, gemm_n) for d in needed}]
    rows = []
    for case in cases:
        if case.own_process and sizes is not None:
            rows.append(measure_in_own_process(case, sizes, device, repeats, samples[0], warmup))
        else:
            rows.append(measure_case(case, device, repeats, samples[0], warmup))
        samples.append({d: peak_gflops(d, device, gemm_n) for d in needed})
        # The peak is the fastest measurement: a busy moment slows a matmul, never speeds it up, and
        # a shared machine's rate moves by a fifth within seconds, so one sample per case bounds it best.
        peaks = _fastest(samples)
        for row in rows:
            for side in row["sides"].values():
                side["mfu"] = side["gflops"] / peaks[row["dtype"]]
        gemm = {"n": gemm_n, "peak": peaks, "start": samples[0], "samples": samples}
        report(rows[-1], {"partial": True, "gemm_gflops": gemm, "repeats": repeats, "cases": rows})
    peaks = _fastest(samples)
    gemm = {"n": gemm_n, "peak": peaks, "start": samples[0], "end": samples[-1], "samples": samples}
    return {"gemm_gflops": gemm, "repeats": repeats, "seconds": time.perf_counter() - start, "cases": rows}


def _fastest(samples: list[dict[str, float]]) -> dict[str, float]:
    """Per dtype, the fastest of the GEMM rates measured."""
    return {d: max(sample[d] for sample in samples) for d in samples[0]}


def with_sizes(name: str) -> Sizes:
    """``SIZES[name]``; raises ``ValueError`` naming the choices for another name."""
    if name not in SIZES:
        raise ValueError(f"unknown sizes {name!r}; expected one of {', '.join(SIZES)}")
    return dataclasses.replace(SIZES[name])
