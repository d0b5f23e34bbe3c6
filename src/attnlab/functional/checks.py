"""Checks of attention's inputs: shapes and dtypes on every call, NaN only when asked (``nan_checks``)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from attnlab.functional.kernels._common import batch_shape

_nan_checks: ContextVar[bool] = ContextVar("attnlab_nan_checks", default=False)


@contextmanager
def nan_checks(enabled: bool = True) -> Iterator[None]:
    """Within this block (this thread or task only), ``attention`` names the input that holds NaN.

    Off by default: the check reduces the context and the query on every call, and on CUDA reads
    the result back to the host, a synchronisation per call. For debugging, e.g. a trainer's
    ``--debug``::

        with nan_checks():
            loss = model(batch)

    Args:
        enabled: False turns the checks off inside an enclosing ``nan_checks()`` block.
    """
    token = _nan_checks.set(enabled)
    try:
        yield
    finally:
        _nan_checks.reset(token)


def nan_checks_enabled() -> bool:
    """Whether the calls in this context check for NaN (see ``nan_checks``); never in code that
    ``torch.compile`` traces (a context variable's lookup would break its graph)."""
    return not torch.compiler.is_compiling() and _nan_checks.get()


def check_no_nan(context: Tensor, query: Tensor, key: Tensor, value: Tensor) -> None:
    """Raise a ``ValueError`` naming the input that holds NaN, once the context or query shows one.

    One reduction over the context and one over the query (SDPA's CPU kernel turns a NaN query
    row into zeros, so the context alone would miss it); the inputs are searched only then.
    """
    if torch.compiler.is_compiling() or not torch.isnan(context.sum() + query.sum()):
        return
    for name, x in (("query", query), ("key", key), ("value", value)):
        if torch.isnan(x).any():
            raise ValueError(f"{name} of shape {tuple(x.shape)} contains NaN")


def check_inputs(query: Tensor, key: Tensor, value: Tensor) -> torch.Size:
    """Raise on bad types, ranks, dtypes, devices or lengths; return the broadcast batch shape."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(x).__name__}")
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., L, d), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype {x.dtype}")
    check_same_dtype_and_device(query, key, value)
    if not query.ndim == key.ndim == value.ndim:
        raise ValueError(
            f"query, key and value must have the same rank, got query {tuple(query.shape)}, "
            f"key {tuple(key.shape)}, value {tuple(value.shape)}"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same length Lk, got key {tuple(key.shape)} and value {tuple(value.shape)}"
        )
    try:
        return batch_shape(query, key, value)
    except RuntimeError:
        raise ValueError(
            f"batch dims of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
            f"{tuple(value.shape)} do not match"
        ) from None


def check_same_dtype_and_device(query: Tensor, key: Tensor, value: Tensor) -> None:
    """Raise a ``ValueError`` naming the three dtypes or devices unless they agree (attribute reads, no sync)."""
    if not query.dtype == key.dtype == value.dtype:
        raise ValueError(
            f"query, key and value must have one dtype, got query {query.dtype}, key {key.dtype}, "
            f"value {value.dtype}; convert them, e.g. key.to(query.dtype)"
        )
    if not query.device == key.device == value.device:
        raise ValueError(
            f"query, key and value must be on one device, got query on {query.device}, key on {key.device}, "
            f"value on {value.device}; move them, e.g. key.to(query.device)"
        )


def check_scale(scale: float | None) -> None:
    """Raise a ``ValueError`` naming ``scale`` unless it is None or a finite number > 0 (a tensor is not read)."""
    if scale is not None and not isinstance(scale, Tensor) and not 0.0 < scale < math.inf:
        raise ValueError(f"scale ({scale}) must be finite and > 0 (the factor of Q K^T), or None for 1 / sqrt(d_k)")


def check_average_dim(dim: int, weights_shape: tuple[int, ...]) -> None:
    """Raise a ``ValueError`` naming ``dim`` and the weights' rank unless ``dim`` indexes the weights."""
    rank = len(weights_shape)
    if not -rank <= dim < rank:
        raise ValueError(
            f"weights_average_dim ({dim}) is out of range for the weights (..., Lq, Lk) of shape "
            f"{weights_shape}: expected a dim in [{-rank}, {rank - 1}]"
        )
