"""The causal kernel: queries meet only the keys before them, so causal attention costs about half.

SDPA's CPU kernel with ``is_causal`` still computes most key blocks of a long sequence (its blocks
are 512 keys wide, and it computes every block it enters in full). Two ways to skip them:

- **Compiled blocks** (fp32 where ``_causal.c`` is built and the CPU has AVX2 and FMA): the
  FlashAttention-2 loops (Dao, 2023) over blocks of 64 queries and 64 keys, each query block
  meeting the key blocks up to its own and stopping, inside the diagonal block, at each 4-query
  tile's last key; forward and backward, about half the products of full attention.
- **Halving** (bf16 and float64, or where the blocks do not run): the lower triangle of the
  (Lq, Lk) map is tiled by halving: in every segment of the sequence, the second half's queries
  see the first half's keys unmasked (one square piece), down to leaf blocks of about
  ``Thresholds.cpu_causal_block_queries`` on the diagonal, which take the causal mask. The pieces
  of one level have one size, so each level is one batched call of PyTorch's CPU flash kernel,
  and each query's pieces are joined by their log-sum-exps (Milakov & Gimelshein, 2018, "Online
  normalizer calculation for softmax"; Dao et al., 2022, FlashAttention, Sec. 3.1):

      l = log(e^{l_1} + e^{l_2}),    C = e^{l_1 - l} C_1 + e^{l_2 - l} C_2

  The backward pass runs the flash kernel's backward on the same pieces with the joined output
  and log-sum-exp, which gives each piece its exact share of the gradient (FlashAttention, Alg. 4).

The compiled blocks also compute full self-attention, every query block against every key
block (``full_blocks``): the same loops without the mask, and on CPU faster than SDPA's flash
kernel (its blocks are 512 keys wide; these are 64 x 64 tiles kept in registers and cache).

Notation: B batch, H heads, N the (padded) sequence, d the head size, S = H * segments.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from attnlab.functional.kernels._common import as_4d, batch_shape
from attnlab.functional.kernels.sdpa import sdpa
from attnlab.functional.kernels.thresholds import current_thresholds
from attnlab.functional.masks import causal_mask, to_bias

try:
    from attnlab.functional.kernels import _causal as _blocks
except ImportError:  # built without a C compiler
    _blocks = None

_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_FLASH_BACKWARD = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
_FLASH_DTYPES = (torch.float32, torch.bfloat16)
_DTYPES = (*_FLASH_DTYPES, torch.float64)


def causal(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
    weights_average_dim: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q K^T * scale + M) V under the causal mask, each query against the keys before it only.

    Computes Eq. 1 of Vaswani et al. (2017) with about half the products of full attention. It
    applies to causal CPU self-attention (``Lq == Lk``) in fp32, bf16 or float64 with no mask or a
    key-padding mask (one that broadcasts over the queries), equal query and value sizes, no
    dropout and no weights; every other call goes to ``sdpa``, so the result always keeps the
    ``Kernel`` contract. Arguments and result as ``Kernel``.
    """
    if not prefix_attention_applies(query, key, value, mask, is_causal, dropout_p, need_weights):
        return sdpa(
            query,
            key,
            value,
            mask,
            is_causal=is_causal,
            dropout_p=dropout_p,
            scale=scale,
            need_weights=need_weights,
            weights_average_dim=weights_average_dim,
        )
    if blocks_fit(query):
        return _by_blocks(query, key, value, mask, scale, causal=True), None
    batch = batch_shape(query, key, value)
    n = query.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    levels, leaf = _tree(n, current_thresholds().cpu_causal_block_queries)
    pad = (0, 0, 0, leaf * 2**levels - n)  # padded keys come after every real query: causally masked
    q, k, v, _ = as_4d(query, key, value, batch, None)  # (B, H, n, d)
    q, k, v = ((F.pad(x, pad) if pad[-1] else x).contiguous() for x in (q, k, v))  # (B, H, N, d)
    bias = None if mask is None else _key_bias(mask, batch, q.shape[:2], n, query.dtype, pad[-1])  # (B, H, N)
    if query.dtype in _FLASH_DTYPES:
        context = _FlashCausal.apply(q, k, v, bias, scale, levels)
    else:
        context = _causal_pieces(q, k, v, bias, scale, levels, _explicit_piece)[0]
    return context[..., :n, :].reshape(*batch, n, value.shape[-1]), None  # (..., Lq, d_v)


def full_blocks(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None = None,
    *,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    scale: float | None = None,
    need_weights: bool = False,
    weights_average_dim: int | None = None,
) -> tuple[Tensor, Tensor | None]:
    """softmax(Q K^T * scale + M) V, every query against every key, by the compiled blocks.

    It applies to fp32 CPU self-attention that is not causal (``Lq == Lk``) where the blocks run
    (``blocks_fit``), with no mask or a key-padding mask, equal query and value sizes, no dropout
    and no weights (``full_blocks_apply``); every other call goes to ``sdpa``. Arguments and
    result as ``Kernel``.
    """
    if is_causal or not (blocks_fit(query) and full_blocks_apply(query, key, value, mask, dropout_p, need_weights)):
        return sdpa(
            query,
            key,
            value,
            mask,
            is_causal=is_causal,
            dropout_p=dropout_p,
            scale=scale,
            need_weights=need_weights,
            weights_average_dim=weights_average_dim,
        )
    return _by_blocks(query, key, value, mask, scale, causal=False), None


def _by_blocks(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, scale: float | None, causal: bool):
    """The context of self-attention by the compiled blocks, causal or over every key; ``mask``
    a key-padding mask or None."""
    batch = batch_shape(query, key, value)
    n = query.shape[-2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    q, k, v, _ = as_4d(query, key, value, batch, None)  # (B, H, n, d)
    bias = None if mask is None else _key_bias(mask, batch, q.shape[:2], n, torch.float32, 0)  # (B, H, n)
    context = _CompiledBlocks.apply(*(_unit_last(x) for x in (q, k, v)), bias, scale, causal)
    return context if context.shape[:-2] == batch else context.reshape(*batch, n, value.shape[-1])


def full_blocks_apply(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout_p: float, need_weights: bool
) -> bool:
    """Whether a call that is not causal fits ``full_blocks``: ``self_attention_applies`` in fp32,
    with a bool or fp32 mask if any; ``blocks_fit`` says whether the blocks run at all."""
    return (
        query.dtype == torch.float32
        and (mask is None or mask.dtype in (torch.bool, torch.float32))
        and self_attention_applies(query, key, value, mask, dropout_p, need_weights)
    )


def prefix_attention_applies(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    mask: Tensor | None,
    is_causal: bool,
    dropout_p: float,
    need_weights: bool,
) -> bool:
    """Whether a call takes the pieces of ``causal`` (otherwise ``causal`` hands it to ``sdpa``)."""
    return is_causal and self_attention_applies(query, key, value, mask, dropout_p, need_weights)


def self_attention_applies(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout_p: float, need_weights: bool
) -> bool:
    """Whether a call is CPU self-attention this module's kernels take: ``Lq == Lk``, equal query,
    key and value sizes, one dtype of fp32, bf16 or float64, no mask or a key-padding mask, no
    dropout and no weights."""
    if need_weights or dropout_p != 0.0 or query.device.type != "cpu":
        return False
    if query.dtype not in _DTYPES or not query.dtype == key.dtype == value.dtype:
        return False
    if query.shape[-2] != key.shape[-2] or not query.shape[-1] == key.shape[-1] == value.shape[-1]:
        return False
    return mask is None or is_key_padding(mask)


@functools.cache
def blocks_available() -> bool:
    """Whether the compiled causal blocks can run here: built, and the CPU has AVX2 and FMA."""
    return _blocks is not None and bool(_blocks.supported())


def blocks_min_queries() -> int:
    """The fewest queries from which fp32 causal self-attention takes the compiled blocks here by
    default: ``Thresholds.cpu_causal_min_queries`` where the blocks run, else 0 (never)."""
    return current_thresholds().cpu_causal_min_queries if blocks_available() else 0


def blocks_fit(query: Tensor) -> bool:
    """Whether ``causal`` computes these (causal, self-attention) queries by the compiled blocks:
    fp32 on a CPU where they run, a head size that is a multiple of 16 up to 256, not traced by
    ``torch.compile`` (a C call breaks its graph; traced calls take SDPA's causal mode)."""
    d = query.shape[-1]
    return (
        query.dtype == torch.float32
        and query.device.type == "cpu"
        and d % 16 == 0
        and 0 < d <= 256
        and not torch.compiler.is_compiling()
        and blocks_available()
    )


def is_key_padding(mask: Tensor) -> bool:
    """Whether a mask broadcasts over the queries (one row of allowed keys or biases per batch and head)."""
    return (mask.ndim < 2 or mask.shape[-2] == 1) and not mask.requires_grad


class _CompiledBlocks(torch.autograd.Function):
    """Causal or full attention of fp32 ``(B, H, N, d)`` views with unit stride along ``d`` by the
    compiled blocks (``_causal.c``), forward and backward; ``bias`` an fp32 key bias ``(B, H, N)``
    or None."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float, causal: bool):
        out = torch.empty(query.shape)
        lse = torch.empty(query.shape[:-1])  # (B, H, N)
        threads = torch.get_num_threads()
        _blocks.forward(*_views(query, key, value, out, bias, lse), *query.shape, scale, threads, causal)
        ctx.save_for_backward(query, key, value, bias, out, lse)
        ctx.scale, ctx.causal = scale, causal
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        query, key, value, bias, out, lse = ctx.saved_tensors
        grads = [torch.empty(query.shape) for _ in range(3)]
        operands = (query, key, value, out, _unit_last(grad_out), bias, lse, *grads)
        _blocks.backward(*_views(*operands), *query.shape, ctx.scale, torch.get_num_threads(), ctx.causal)
        return *grads, None, None, None


def _views(*tensors: Tensor | None) -> list[tuple[int, ...]]:
    """What ``_causal.c`` reads of each operand: its address and its first three strides (0s for None)."""
    return [(0, 0, 0, 0) if x is None else (x.data_ptr(), *x.stride()[:3]) for x in tensors]


def _unit_last(x: Tensor) -> Tensor:
    """``x``, or a contiguous copy where its last dimension is strided."""
    return x if x.stride(-1) == 1 else x.contiguous()


class _FlashCausal(torch.autograd.Function):
    """Causal attention of ``(B, H, N, d)`` inputs by halving; forward and backward by the flash kernel."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float, levels: int):
        out, lse = _causal_pieces(query, key, value, bias, scale, levels, _flash_piece)
        # Rows with no allowed key: any finite log-sum-exp makes the backward's weights exp(-inf) = 0.
        ctx.save_for_backward(query, key, value, bias, out, lse.masked_fill(lse == -math.inf, 0.0))
        ctx.scale, ctx.levels = scale, levels
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        query, key, value, bias, out, lse = ctx.saved_tensors
        accumulate = torch.float32 if query.dtype == torch.bfloat16 else query.dtype
        grads = [torch.zeros(x.shape, dtype=accumulate) for x in (query, key, value)]
        saved = (grad_out.contiguous(), query, key, value, out, lse, bias)
        for level in range(ctx.levels + 1):
            go, q, k, v, o, lse_rows, b = _piece_inputs(*saved, level, ctx.levels)
            diagonal = level == ctx.levels
            dq, dk, dv = _FLASH_BACKWARD(go, q, k, v, o, lse_rows, 0.0, diagonal, attn_mask=b, scale=ctx.scale)
            _half(grads[0], level, ctx.levels, 1).add_(dq)
            _half(grads[1], level, ctx.levels, 0).add_(dk)
            _half(grads[2], level, ctx.levels, 0).add_(dv)
        return *(grad.to(query.dtype) for grad in grads), None, None, None


def _causal_pieces(
    query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, scale: float, levels: int, piece_fn
) -> tuple[Tensor, Tensor]:
    """``(C (B, H, N, d), log-sum-exp (B, H, N))`` of the joined pieces; rows with no allowed key get 0, -inf."""
    allowed = None if bias is None else F.pad((bias > -math.inf).int().cumsum(-1), (1, 0))  # (B, H, N + 1)
    out, lse = None, None
    for level in reversed(range(levels + 1)):  # the diagonal leaves first
        _, q, k, v, _, _, b = _piece_inputs(None, query, key, value, None, None, bias, level, levels)
        piece_out, piece_lse = piece_fn(q, k, v, b, level == levels, scale)  # (B, S, rows, d), (B, S, rows)
        if allowed is not None:
            piece_lse = piece_lse.masked_fill(_empty_rows(allowed, level, levels), -math.inf)
        if out is None:
            out, lse = piece_out.reshape(query.shape), piece_lse.reshape(query.shape[:-1])
            continue
        rows_out, rows_lse = _half(out, level, levels, 1), _half(lse, level, levels, 1)
        if out.requires_grad:  # the explicit pieces, under autograd: out of place
            joined_out, joined_lse = _join(rows_out, rows_lse, piece_out, piece_lse)
            out, lse = _with_half(out, level, joined_out), _with_half(lse, level, joined_lse)
        else:
            _join_into(rows_out, rows_lse, piece_out, piece_lse)
    if allowed is not None:
        out = out.masked_fill((lse == -math.inf).unsqueeze(-1), 0.0)
    return out.to(query.dtype), lse


def _piece_inputs(grad_out, query, key, value, out, lse, bias, level: int, levels: int) -> list:
    """The views of one level's batched pieces: queries' rows (second halves, or the leaves) and their keys."""
    rows = [_half(x, level, levels, 1) if x is not None else None for x in (grad_out, query, out, lse)]
    keys = [_half(x, level, levels, 0) for x in (key, value)]
    piece_bias = None if bias is None else _half(bias, level, levels, 0).unsqueeze(-2)  # (B, S, 1, rows)
    return [rows[0], rows[1], *keys, rows[2], rows[3], piece_bias]


def _half(x: Tensor, level: int, levels: int, which: int) -> Tensor:
    """``(B, H * 2^level, N / 2^(level+1), ...)``: the first (0) or second (1) half of every segment of a
    level; at ``level == levels`` the leaf blocks themselves. ``x`` is ``(B, H, N, ...)``, contiguous."""
    if level == levels:
        return x.unflatten(2, (2**level, -1)).flatten(1, 2)
    return x.unflatten(2, (2**level, 2, -1)).select(3, which).flatten(1, 2)


def _with_half(x: Tensor, level: int, second: Tensor) -> Tensor:
    """``x`` ``(B, H, N, ...)`` with the second half of every segment of ``level`` replaced (out of place)."""
    halves = x.unflatten(2, (2**level, 2, -1))  # (B, H, segments, 2, rows, ...)
    second = second.unflatten(1, (x.shape[1], 2**level))  # (B, H, segments, rows, ...)
    return torch.stack((halves.select(3, 0), second.to(x.dtype)), dim=3).flatten(2, 4)


def _tree(n: int, block: int) -> tuple[int, int]:
    """``(levels, leaf)``: halvings and leaf size with ``leaf * 2^levels >= n`` and leaves near ``block``."""
    levels = max(0, round(math.log2(max(n / max(block, 1), 1.0))))
    return levels, -(-n // 2**levels)


def _flash_piece(
    query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, diagonal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """One level's pieces by PyTorch's CPU flash kernel: ``(C in fp32 (B, S, rows, d), lse (B, S, rows))``."""
    out, lse = _FLASH(query, key, value, 0.0, diagonal, attn_mask=bias, scale=scale)
    return out.float(), lse


def _explicit_piece(
    query: Tensor, key: Tensor, value: Tensor, bias: Tensor | None, diagonal: bool, scale: float
) -> tuple[Tensor, Tensor]:
    """One level's pieces as products and a log-sum-exp in the inputs' dtype: ``(C (B, S, rows, d), lse)``."""
    scores = query @ key.transpose(-2, -1) * scale  # (B, S, rows, rows)
    if bias is not None:
        scores = scores + bias
    if diagonal:  # a square leaf: query r sees keys up to r
        scores = scores.masked_fill(~causal_mask(scores.shape[-2], device=scores.device), -math.inf)
    keep = (scores > -math.inf).any(-1)  # (B, S, rows)
    lse = torch.logsumexp(scores.masked_fill(~keep.unsqueeze(-1), 0.0), dim=-1).masked_fill(~keep, -math.inf)
    return torch.exp(scores - lse.masked_fill(~keep, 0.0).unsqueeze(-1)) @ value, lse


def _join(out: Tensor, lse: Tensor, piece_out: Tensor, piece_lse: Tensor) -> tuple[Tensor, Tensor]:
    """Two partial softmaxes joined by their log-sum-exps; rows empty in both stay zeros and -inf, without NaN."""
    top = torch.maximum(lse, piece_lse)
    top = top.masked_fill(top == -math.inf, 0.0)  # (B, S, rows)
    weight, piece_weight = torch.exp(lse - top), torch.exp(piece_lse - top)
    total = weight + piece_weight  # 0 only where both pieces are empty
    safe_total = total.clamp_min(torch.finfo(total.dtype).tiny)
    out = (out * weight.unsqueeze(-1) + piece_out * piece_weight.unsqueeze(-1)) / safe_total.unsqueeze(-1)
    return out, torch.where(total > 0, top + torch.log(safe_total), -math.inf)


def _join_into(out: Tensor, lse: Tensor, piece_out: Tensor, piece_lse: Tensor) -> None:
    """``_join`` in place into the views ``out`` and ``lse``, for the flash pieces (no autograd)."""
    joined = torch.logaddexp(lse, piece_lse)  # (B, S, rows)
    finite = joined.masked_fill(joined == -math.inf, 0.0)  # rows empty in both pieces keep weights 0
    weight, piece_weight = (torch.exp(x - finite).unsqueeze(-1) for x in (lse, piece_lse))
    out.mul_(weight).addcmul_(piece_out, piece_weight)
    lse.copy_(joined)


def _key_bias(mask: Tensor, batch: torch.Size, heads_4d: torch.Size, n: int, dtype: torch.dtype, pad: int) -> Tensor:
    """A key-padding mask as the flash kernel's float bias ``(B, H, N)`` in the 4-d batch layout."""
    bias = to_bias(mask, dtype)
    bias = bias.reshape(*(1,) * (len(batch) + 2 - bias.ndim), *bias.shape)  # (..., 1, Lk)
    bias = bias.expand(*batch, 1, n).reshape(*heads_4d, n)  # (B, H, n)
    return F.pad(bias, (0, pad)).contiguous()


def _empty_rows(allowed: Tensor, level: int, levels: int) -> Tensor:
    """Which rows of a level's pieces have no allowed key, ``(B, S, rows)``; ``allowed`` counts keys before each."""
    n = allowed.shape[-1] - 1
    position = torch.arange(n, device=allowed.device).unflatten(0, (2**level, -1))  # (segments, segment)
    if level == levels:  # a leaf row sees the leaf's keys up to itself
        seen = allowed[..., position + 1] - allowed[..., position[:, :1]]  # (B, H, segments, leaf)
    else:  # a second-half row sees the whole first half
        half = position.shape[-1] // 2
        seen = (allowed[..., position[:, half : half + 1]] - allowed[..., position[:, :1]]).expand(
            *allowed.shape[:-1], 2**level, position.shape[-1] - half
        )
    return (seen == 0).flatten(1, 2)
