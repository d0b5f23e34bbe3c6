"""Capture attention maps from a normal forward call: ``with capture(model) as maps: model(x)``.

The model declares where its attention is computed (``model.attention_sites()``: kind, layer and
module, as ``AttentionMaps`` names them); ``capture`` hooks only the sites asked for, for the time
of the ``with`` block, and removes every hook on exit, so nothing stays on a module between calls
and the sites not asked keep their fused kernel. A ``MultiHeadAttention`` site is asked for its
per-head weights (its ``need_weights``, as ``torch.nn.MultiheadAttention`` spells it); the caller of
the module still gets what it asked for. A CNN's SE gate and spatial mask are recomputed from the
block's input with the module's own ``excitation`` / ``mask``. Hugging Face BERT and ViT models go
to ``viz.hf_capture``, which recomputes softmax(Q K^T / sqrt(d)) beside their SDPA kernel.

Every call of a site adds one map. An RNN decoder's site is the decoder itself: its teacher-forced
forward returns the source attention of every step, one ``(B, 1, T, S)`` map.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from attnlab.layers.channel_attention import SEBlock
from attnlab.layers.multihead import MultiHeadAttention
from attnlab.layers.spatial_attention import SpatialAttention
from attnlab.models.rnn_decoders import RNNDecoder
from attnlab.viz.maps import KINDS, AttentionMap, AttentionMaps, check_choice

__all__ = ["AttentionMap", "AttentionMaps", "CaptureSpec", "capture"]

Site = tuple[str, int, nn.Module]


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: ``capture``'s ``layers``, ``heads`` and ``kinds`` as one value, which the
    inference API takes as its ``attention`` argument (``True`` there means ``CaptureSpec()``: all)."""

    layers: int | Sequence[int] | None = None
    heads: int | Sequence[int] | None = None
    kinds: str | Sequence[str] | None = None

    @classmethod
    def of(cls, attention: bool | CaptureSpec | None) -> CaptureSpec | None:
        """``True`` -> all maps, ``False``/None -> None, a ``CaptureSpec`` as it is."""
        if isinstance(attention, CaptureSpec):
            return attention
        if attention is None or isinstance(attention, bool):
            return cls() if attention else None
        raise TypeError(f"attention must be a bool or a CaptureSpec, got {type(attention).__name__}")


@contextlib.contextmanager
def capture(
    model: nn.Module,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
    kinds: str | Sequence[str] | None = None,
) -> Iterator[AttentionMaps]:
    """Record the attention maps computed inside the ``with`` block.

    Args:
        model: an attnlab model (anything with ``attention_sites()``), or a Hugging Face BERT or
            ViT model.
        layers: the layers to capture of every kind (an index or a list; negative from the last
            layer of the kind); None: all.
        heads: the heads to keep (same rules); None: all. CNN masks and gates have no heads.
        kinds: the kinds to capture (``AttentionMaps``' names, e.g. ``"cross"``); None: all.

    Yields:
        An ``AttentionMaps`` that fills as the model runs. Weights are detached from autograd.

    Raises:
        ValueError: a layer, head or kind the model does not have (the message names what exists),
            or a model with no attention sites.

    Example:
        >>> with capture(model, layers=-1, kinds="cross") as maps:
        ...     model(src, tgt_in)
        >>> maps["cross", -1].shape  # (B, H, T, S)
    """
    if _is_huggingface(model):
        from attnlab.viz.hf_capture import capture_huggingface

        if kinds is not None:
            raise ValueError(f"kinds={kinds!r}: a Hugging Face model has one kind of map; leave kinds out")
        with capture_huggingface(model, layers=layers, heads=heads) as maps:
            yield maps
        return
    sites = _chosen_sites(model, layers, kinds)
    maps = AttentionMaps()
    handles = []
    try:
        for kind, layer, module in sites:
            handles += _hook(module, kind, layer, heads, maps)
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def attention_sites(model: nn.Module) -> list[Site]:
    """``model.attention_sites()`` checked: ``(kind, layer, module)`` triples with known kinds."""
    if not hasattr(model, "attention_sites"):
        raise ValueError(
            f"{type(model).__name__} declares no attention sites: capture works on attnlab's models "
            f"(Transformer, RNNSeq2Seq, ViT, BertEncoder, AttentionCNN) and Hugging Face BERT / ViT models"
        )
    sites = list(model.attention_sites())
    for kind, _, _ in sites:
        if kind not in KINDS:
            raise ValueError(f"{type(model).__name__} declares a site of kind {kind!r}, not one of {list(KINDS)}")
    return sites


def _chosen_sites(
    model: nn.Module, layers: int | Sequence[int] | None, kinds: str | Sequence[str] | None
) -> list[Site]:
    sites = attention_sites(model)
    if not sites:
        raise ValueError(f"this {type(model).__name__} computes no attention to capture (it has no attention sites)")
    present = list(dict.fromkeys(kind for kind, _, _ in sites))
    wanted = present if kinds is None else [kinds] if isinstance(kinds, str) else list(kinds)
    for kind in wanted:
        if kind not in present:
            raise ValueError(f"kind {kind!r} is not in this {type(model).__name__}: it has {present}")
    chosen = []
    for kind in wanted:
        of_kind = [site for site in sites if site[0] == kind]
        keep = check_choice("layer", layers, len(of_kind), f"{kind} layers")
        chosen += [of_kind[i] for i in keep]
    return chosen


def _hook(
    module: nn.Module, kind: str, layer: int, heads: int | Sequence[int] | None, maps: AttentionMaps
) -> list[Any]:
    """Register the hooks that record ``module``'s map into ``maps``; return their handles."""

    def record(weights: Tensor, kept: tuple[int, ...] | None) -> None:
        maps.maps.append(AttentionMap(kind, layer, kept, weights.detach()))

    if isinstance(module, MultiHeadAttention):
        kept = check_choice("head", heads, module.num_heads, "heads")
        return _hook_multihead(module, lambda w: record(w[:, list(kept)], kept))
    if isinstance(module, RNNDecoder):  # teacher forcing returns a (B, T, S), one per step stacked
        return [module.register_forward_hook(lambda m, args, out: record(out[2].unsqueeze(1), None))]
    if isinstance(module, SEBlock):
        return [module.register_forward_hook(lambda m, args, out: record(m.excitation(args[0]), None))]
    if isinstance(module, SpatialAttention):
        return [module.register_forward_hook(lambda m, args, out: record(m.mask(args[0]), None))]
    raise ValueError(f"capture cannot read a {type(module).__name__} site ({kind} layer {layer})")


def _hook_multihead(module: MultiHeadAttention, record: Callable[[Tensor], None]) -> list[Any]:
    """Ask the module for per-head weights, record them, and hand its caller what it asked for."""
    asked: list[tuple[bool, bool]] = []  # a stack: (need_weights, average_attn_weights) of each open call

    def before(mod: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        asked.append((kwargs.get("need_weights", False), kwargs.get("average_attn_weights", True)))
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def after(mod: nn.Module, args: tuple, kwargs: dict, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor | None]:
        need, average = asked.pop()
        out, weights = output  # weights (B, H, Lq, Lk), or (H, Lq, Lk) unbatched
        record(weights if weights.ndim == 4 else weights.unsqueeze(0))
        if not need:
            return out, None
        return out, weights.mean(dim=-3) if average else weights

    return [
        module.register_forward_pre_hook(before, with_kwargs=True),
        module.register_forward_hook(after, with_kwargs=True),
    ]


def _is_huggingface(model: nn.Module) -> bool:
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)
