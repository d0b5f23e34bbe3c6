"""The thresholds the dispatcher chooses kernels by: defaults right on any machine, or a measured table.

``python -m benchmarks.attention_kernels --write`` measures this machine and writes the table to
``table_path()``: ``$ATTNLAB_KERNEL_TABLE`` when set, else ``$XDG_CACHE_HOME/attnlab/attention_kernels.json``
(``~/.cache`` without XDG). The table is read once, at the first call that needs a threshold; a
table that is corrupt or was measured on another machine or torch gives a warning and the defaults.
What the defaults rest on is in docs/results/attention_kernels.md.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

TABLE_FORMAT = "attnlab.attention_kernels/1"
TABLE_ENV = "ATTNLAB_KERNEL_TABLE"


@dataclass(frozen=True)
class Thresholds:
    """Where one kernel stops paying and the next one starts (lengths in keys or queries).

    Attributes:
        cpu_backward_sdpa_min_keys_float32: fp32 CPU calls that need gradients take SDPA from
            this many keys on, the explicit kernel below.
        cpu_backward_sdpa_min_keys_bfloat16: likewise for bf16 and fp16 (SDPA's low-precision
            CPU backward is slow for short sequences). This and the other two ``_bfloat16``
            thresholds rest on CPUs with native bf16 arithmetic; elsewhere
            (``default_native_bf16()`` False) they default to 0, always SDPA: on an AVX2 CPU the
            explicit kernel's bf16 products ran 1.2 to 31 times slower than SDPA.
        cpu_backward_sdpa_min_keys_float64: likewise for float64.
        cpu_forward_sdpa_min_keys_bfloat16: bf16 and fp16 CPU calls that need no gradients take
            SDPA from this many keys on, the explicit kernel below (SDPA's low-precision CPU
            forward lost to matmul-softmax-matmul on short sequences where measured).
        cpu_causal_min_queries: fp32 causal CPU self-attention with no mask or a key-padding
            mask and no weights takes the causal kernel's compiled blocks
            (``attnlab.functional.kernels.causal``) from this many queries on where they run (0:
            never); the default is ``default_causal_min_queries()``.
        cpu_causal_block_queries: about the query rows of the causal kernel's leaf blocks.
        cpu_full_blocks_min_queries: fp32 CPU self-attention that is not causal, with no mask or
            a key-padding mask, no weights and no dropout, takes the same compiled blocks over every
            key (``causal.full_blocks``) from this many queries on where they run (0: never); the
            default is ``default_full_blocks_min_queries()``.
        cpu_contiguous_min_keys: from this many keys on, SDPA on CPU gets contiguous copies of
            strided heads (the copy pays for itself only on long sequences).
        cpu_step_plain_max_queries: a decoding step takes the plain products of the step kernel
            for 2 to this many fp32 queries per (batch, head) on CPU (1: never)...
        cpu_step_plain_max_keys: ...against at most this many keys.
        cpu_step_plain_max_keys_bfloat16: a bf16 decoding step of one query per (batch, head) on
            CPU takes the plain products against at most this many keys (0: never); grouped beam
            queries stay on SDPA, where the products gained nothing in a whole search.
        cpu_linear_onednn_min_rows: fp32 CPU linear products of at least this many rows run on
            oneDNN in ``attnlab.functional.kernels.linear.linear`` (0: never, the BLAS);
            the default is ``default_linear_onednn_min_rows()``...
        cpu_linear_onednn_min_macs: ...and of at least this many multiply-adds (rows x in x out):
            below it oneDNN's fixed cost per call (some 10 us more than the BLAS's) outweighs its
            faster arithmetic.
        cpu_thin_max_rows: fp32 products of at most this many rows, by weights the decoding
            engine packs, take the thin-product kernel (``attnlab.functional.kernels.thin``)
            where it is available (0: never, oneDNN's packed products), and searches of at most
            this many rows run on the engine's fused decoder steps where the fused step kernel
            also runs (``attnlab.inference.fused_decoder``); the default is
            ``default_thin_max_rows()``.
        cpu_thin_max_rows_bfloat16: in bf16 decoding on the fused decoder steps, products of at
            most this many rows take the thin kernel's bf16 pair panels where the CPU has AVX-512
            BF16 (``thin.pack_pairs``: the rows rounded to bf16, as oneDNN's), oneDNN's bf16
            products above (0: always oneDNN); 40 with native bf16, else 0.
        cpu_step_fused_max_keys: a decoding step's fp32 attention against at most this many keys
            takes the fused step kernel (``attnlab.functional.kernels.fused_step``) where it is
            available, any number of queries up to ``cpu_step_plain_max_queries`` (0: never);
            the default is ``default_step_fused_max_keys()``.
        weights_chunk_elements: scores in one block of the blockwise kernel and of the weights
            computed beside SDPA (a memory bound, not a speed threshold).
    """

    cpu_backward_sdpa_min_keys_float32: int = 0
    cpu_backward_sdpa_min_keys_bfloat16: int = dataclasses.field(default_factory=lambda: _bf16_default(512))
    cpu_backward_sdpa_min_keys_float64: int = 0
    cpu_forward_sdpa_min_keys_bfloat16: int = dataclasses.field(default_factory=lambda: _bf16_default(768))
    cpu_causal_min_queries: int = dataclasses.field(default_factory=lambda: default_causal_min_queries())
    cpu_causal_block_queries: int = 256
    cpu_full_blocks_min_queries: int = dataclasses.field(default_factory=lambda: default_full_blocks_min_queries())
    cpu_contiguous_min_keys: int = 256
    cpu_step_plain_max_queries: int = 8
    cpu_step_plain_max_keys: int = 128
    cpu_step_plain_max_keys_bfloat16: int = dataclasses.field(default_factory=lambda: _bf16_default(1024))
    cpu_linear_onednn_min_rows: int = dataclasses.field(default_factory=lambda: default_linear_onednn_min_rows())
    cpu_linear_onednn_min_macs: int = 1 << 24
    cpu_thin_max_rows: int = dataclasses.field(default_factory=lambda: default_thin_max_rows())
    cpu_thin_max_rows_bfloat16: int = dataclasses.field(default_factory=lambda: _bf16_default(40))
    cpu_step_fused_max_keys: int = dataclasses.field(default_factory=lambda: default_step_fused_max_keys())
    weights_chunk_elements: int = 1 << 22

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{field.name} must be an int >= 0, got {value!r}")
        for name in ("weights_chunk_elements", "cpu_causal_block_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def backward_sdpa_min_keys(self, dtype: torch.dtype) -> int:
        """The fewest keys from which a CPU call in ``dtype`` that needs gradients takes SDPA."""
        if dtype == torch.float32:
            return self.cpu_backward_sdpa_min_keys_float32
        if dtype == torch.float64:
            return self.cpu_backward_sdpa_min_keys_float64
        return self.cpu_backward_sdpa_min_keys_bfloat16

    def forward_sdpa_min_keys(self, dtype: torch.dtype) -> int:
        """The fewest keys from which a CPU call in ``dtype`` that needs no gradients takes SDPA."""
        return self.cpu_forward_sdpa_min_keys_bfloat16 if dtype in (torch.bfloat16, torch.float16) else 0


_current: Thresholds | None = None


def current_thresholds() -> Thresholds:
    """The thresholds in force: those set by ``set_thresholds``, else the table at ``table_path()``
    read once (the defaults when there is none)."""
    global _current
    if _current is None:
        _current = load_table(table_path())
    return _current


def set_thresholds(thresholds: Thresholds | None) -> Thresholds | None:
    """Hand the dispatcher these thresholds (None: read the table again at the next call); returns
    the ones set before, for restoring."""
    global _current
    previous, _current = _current, thresholds
    return previous


def table_path() -> Path:
    """``$ATTNLAB_KERNEL_TABLE``, else ``attnlab/attention_kernels.json`` in the user's cache folder."""
    if os.environ.get(TABLE_ENV):
        return Path(os.environ[TABLE_ENV])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "attnlab" / "attention_kernels.json"


def machine() -> dict[str, str]:
    """What a table's measurements hold for: the CPU model, its architecture and torch's version."""
    return {"cpu": _cpu_model(), "arch": platform.machine(), "torch": torch.__version__}


def load_table(path: Path) -> Thresholds:
    """The thresholds a table at ``path`` holds; the defaults when there is no file, and with a
    warning when it is corrupt, of another format, or measured on another machine or torch."""
    if not path.is_file():
        return Thresholds()
    try:
        table = json.loads(path.read_text())
        return _thresholds_of(table)
    except (OSError, ValueError, TypeError, KeyError) as error:
        warnings.warn(f"attention kernel table {path} ignored, using the defaults: {error}", stacklevel=2)
        return Thresholds()


def write_table(thresholds: Thresholds, path: Path | None = None, measured: dict[str, Any] | None = None) -> Path:
    """Write ``thresholds`` for this machine to ``path`` (``table_path()`` when None); returns the path."""
    path = table_path() if path is None else path
    path.parent.mkdir(parents=True, exist_ok=True)
    table = {
        "format": TABLE_FORMAT,
        "machine": machine(),
        "thresholds": dataclasses.asdict(thresholds),
        "measured": measured or {},
    }
    path.write_text(json.dumps(table, indent=2) + "\n")
    return path


@functools.cache
def default_linear_onednn_min_rows() -> int:
    """The default of ``Thresholds.cpu_linear_onednn_min_rows`` here: ``linear_onednn_rule`` on
    ``/proc/cpuinfo`` and oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``)."""
    return linear_onednn_rule(_cpuinfo(), _onednn_isa_cap())


def linear_onednn_rule(cpuinfo: str, isa_cap: str = "") -> int:
    """1 (every fp32 linear product on oneDNN) for an x86 CPU with AVX-512 that is not Intel's,
    where MKL runs its AVX2 code and oneDNN its AVX-512 code, unless ``isa_cap`` holds oneDNN
    below AVX-512; else 0 (the BLAS, which runs the CPU's widest code itself)."""
    if not _cap_allows(isa_cap, ("AVX512", "AVX10")):
        return 0
    vendor = _fields(cpuinfo).get("vendor_id", "")
    return int(vendor not in ("", "GenuineIntel") and "avx512f" in _flags(cpuinfo))


@functools.cache
def default_thin_max_rows() -> int:
    """The default of ``Thresholds.cpu_thin_max_rows`` here: ``thin_rule`` on ``/proc/cpuinfo`` and
    oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``)."""
    return thin_rule(_cpuinfo(), _onednn_isa_cap())


def thin_rule(cpuinfo: str, isa_cap: str = "") -> int:
    """On an x86 CPU with AVX2 and FMA: 40 where oneDNN runs AVX-512 code, against which the thin
    kernel's wide (16-column, AVX-512) panels were ahead up to 16 rows and about even at 40 and
    64, and fused decoder steps of 40 rows (beam 5 of 8 sentences) were ahead of the layer-by-layer
    ones; 128 where oneDNN runs AVX2 code (no AVX-512, or ``isa_cap`` below it), against which
    products of up to 128 rows won (at 256 they were even). Else 0: the kernel does not run."""
    if not _avx2_and_fma(cpuinfo):
        return 0
    wide = "avx512f" in _flags(cpuinfo) and _cap_allows(isa_cap, ("AVX512", "AVX10"))
    return 40 if wide else 128


@functools.cache
def default_step_fused_max_keys() -> int:
    """The default of ``Thresholds.cpu_step_fused_max_keys`` here: ``step_fused_rule`` on ``/proc/cpuinfo``."""
    return step_fused_rule(_cpuinfo())


def step_fused_rule(cpuinfo: str) -> int:
    """1024 on an x86 CPU with AVX2 and FMA, where the fused step kernel outran both SDPA and the
    plain products for 1 to 5 queries up to 1000 keys, against PyTorch's AVX2 and AVX-512 kernels
    alike; else 0 (the kernel does not run)."""
    return 1024 if _avx2_and_fma(cpuinfo) else 0


@functools.cache
def default_causal_min_queries() -> int:
    """The default of ``Thresholds.cpu_causal_min_queries`` here: ``causal_rule`` on ``/proc/cpuinfo``."""
    return causal_rule(_cpuinfo())


def causal_rule(cpuinfo: str) -> int:
    """48 on an x86 CPU with AVX2 and FMA, where the compiled causal blocks took about half of
    SDPA's causal time from 48 queries on (forward and backward), against PyTorch's AVX2 and
    AVX-512 kernels alike, and were ahead by less at 32; else 0 (SDPA's causal mode: the blocks
    do not run)."""
    return 48 if _avx2_and_fma(cpuinfo) else 0


def default_full_blocks_min_queries() -> int:
    """The default of ``Thresholds.cpu_full_blocks_min_queries`` here: ``full_blocks_rule`` on ``/proc/cpuinfo``."""
    return full_blocks_rule(_cpuinfo())


def full_blocks_rule(cpuinfo: str) -> int:
    """32 on an x86 CPU with AVX2 and FMA, where the compiled blocks over every key took 0.5-0.8x
    of SDPA's time from 32 queries on (forward, and forward and backward; measured on an AVX-512
    CPU, docs/results/attention_kernels.md), and about its time at 16; else 0 (SDPA)."""
    return 32 if _avx2_and_fma(cpuinfo) else 0


def _avx2_and_fma(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo``'s flags name AVX2 and FMA (what attnlab's compiled kernels need)."""
    flags = _flags(cpuinfo)
    return "avx2" in flags and "fma" in flags


@functools.cache
def default_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively: ``native_bf16_rule`` on ``/proc/cpuinfo`` and
    oneDNN's ISA cap (``ONEDNN_MAX_CPU_ISA``)."""
    return native_bf16_rule(_cpuinfo(), _onednn_isa_cap())


def native_bf16_rule(cpuinfo: str, isa_cap: str = "") -> bool:
    """True for an x86 CPU with AVX-512 BF16 or AMX BF16 instructions, unless ``isa_cap`` holds
    oneDNN below them; False elsewhere, other architectures included (their bf16 kernels were
    not measured here: PyTorch's SDPA is the default there)."""
    if not _cap_allows(isa_cap, ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")):
        return False
    flags = _flags(cpuinfo)
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _bf16_default(native: int) -> int:
    """A ``_bfloat16`` threshold's default: ``native`` where the CPU has native bf16, else 0 (SDPA)."""
    return native if default_native_bf16() else 0


def fused_step_fits(query: Tensor, key: Tensor) -> bool:
    """Whether a decoding step's fp32 queries ``(..., Lq, d)`` take the fused step kernel by the
    thresholds (the kernel's own operand checks come after)."""
    if query.device.type != "cpu" or query.dtype != torch.float32:
        return False
    thresholds = current_thresholds()
    return (
        query.shape[-2] <= thresholds.cpu_step_plain_max_queries and key.shape[-2] <= thresholds.cpu_step_fused_max_keys
    )


def plain_step_fits(query: Tensor, key: Tensor) -> bool:
    """Whether a decoding step's queries ``(..., Lq, d)`` take the step kernel's plain products."""
    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.bfloat16):
        return False
    thresholds = current_thresholds()
    if query.dtype == torch.bfloat16:
        return query.shape[-2] == 1 and key.shape[-2] <= thresholds.cpu_step_plain_max_keys_bfloat16
    return (
        2 <= query.shape[-2] <= thresholds.cpu_step_plain_max_queries
        and key.shape[-2] <= thresholds.cpu_step_plain_max_keys
    )


def _thresholds_of(table: Any) -> Thresholds:
    """Validate a parsed table and build its thresholds; raises ValueError naming what is wrong."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        found = table.get("format") if isinstance(table, dict) else type(table).__name__
        raise ValueError(f"format {found!r}, expected {TABLE_FORMAT!r}")
    if table.get("machine") != machine():
        raise ValueError(f"measured on {table.get('machine')}, this is {machine()}")
    values = table["thresholds"]
    known = {field.name for field in dataclasses.fields(Thresholds)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; expected some of {sorted(known)}")
    return Thresholds(**values)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset(_flags(_cpuinfo()))


@functools.cache
def cpu_model() -> str:
    """This CPU's model name from ``/proc/cpuinfo`` (empty where there is none)."""
    return _fields(_cpuinfo()).get("model name", "")


def _fields(cpuinfo: str) -> dict[str, str]:
    """``/proc/cpuinfo``'s ``name: value`` lines (the last CPU's where they repeat)."""
    fields = dict(line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)
    return {name.strip(): value.strip() for name, value in fields.items()}


def _flags(cpuinfo: str) -> list[str]:
    """The CPU's feature flags in ``/proc/cpuinfo``'s text."""
    return _fields(cpuinfo).get("flags", "").split()


def _cap_allows(isa_cap: str, levels: tuple[str, ...]) -> bool:
    """Whether oneDNN's ISA cap (an ``ONEDNN_MAX_CPU_ISA`` value, any case) leaves it the ISA
    levels named by these prefixes: no cap, ``ALL``/``DEFAULT``, or one of them."""
    cap = isa_cap.strip().upper()
    return cap in ("", "ALL", "DEFAULT") or cap.startswith(levels)


def _onednn_isa_cap() -> str:
    """oneDNN's ISA cap from the environment (``ONEDNN_MAX_CPU_ISA``, formerly ``DNNL_MAX_CPU_ISA``)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", ""))


@functools.cache
def _cpuinfo() -> str:
    """``/proc/cpuinfo``'s text, read once; empty where there is none."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
