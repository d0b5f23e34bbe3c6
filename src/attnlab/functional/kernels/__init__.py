"""Interchangeable implementations of scaled-dot softmax attention behind one contract (``Kernel``).

softmax(Q K^T * scale + M) V (Vaswani et al., 2017, Eq. 1), every kernel with the same arguments,
the same result and the same mask convention (bool ``True`` = may attend, or a float bias; a
query with no allowed key gets zero context and zero weights):

- ``explicit``: matmul, softmax, matmul; any dtype, forward and backward.
- ``sdpa``: ``F.scaled_dot_product_attention``, weights computed beside it on request.
- ``blockwise``: a block of queries at a time, never all heads' maps at once.
- ``causal``: causal attention with each block of queries against its key prefix only, about
  half the work of full attention; other calls go to ``sdpa``.
- ``full_blocks``: the same compiled blocks over every key, for self-attention that is not
  causal (fp32 CPU); other calls go to ``sdpa``.
- ``step``: a decoding step's few queries against a cache, in place and without autograd;
  ``step_attention`` is the decoding engine's entry, choosing it or SDPA per call.

``choose_kernel`` picks one per call from ``Thresholds``: defaults, or the table that
``python -m benchmarks.attention_kernels --write`` measures on this machine.
"""

from attnlab.functional.kernels._common import Kernel
from attnlab.functional.kernels.blockwise import attention_weights, blockwise
from attnlab.functional.kernels.causal import causal, full_blocks
from attnlab.functional.kernels.dispatch import choose_kernel
from attnlab.functional.kernels.explicit import explicit
from attnlab.functional.kernels.sdpa import sdpa
from attnlab.functional.kernels.step import step, step_attention
from attnlab.functional.kernels.thresholds import (
    Thresholds,
    current_thresholds,
    load_table,
    set_thresholds,
    table_path,
    write_table,
)

KERNELS: dict[str, Kernel] = {
    "explicit": explicit,
    "sdpa": sdpa,
    "blockwise": blockwise,
    "causal": causal,
    "full_blocks": full_blocks,
    "step": step,
}
"""Every kernel by name."""

__all__ = [
    "KERNELS",
    "Kernel",
    "Thresholds",
    "attention_weights",
    "blockwise",
    "causal",
    "choose_kernel",
    "current_thresholds",
    "explicit",
    "full_blocks",
    "load_table",
    "sdpa",
    "set_thresholds",
    "step",
    "step_attention",
    "table_path",
    "write_table",
]
