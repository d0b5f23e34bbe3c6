"""Attention maps from Hugging Face BERT and ViT models that run their fused (SDPA) kernels.

Run with ``attn_implementation="sdpa"``, a Hugging Face model returns no attentions: the fused
kernel never forms the weights. ``capture_huggingface`` hooks the self-attention modules of the
layers asked and, from each module's own query and key projections of its input, recomputes

    A = softmax(Q K^T / sqrt(d_k) + M)        (Vaswani et al. 2017, "Attention Is All You Need", eq. 1)

with M the additive mask the module was given (a 4-D float mask, a bool mask, or None under SDPA
without padding), exactly as the model's eager path forms its weights. The model's own outputs
stay those of its kernel; the layers not asked get no hook, and no hook outlives the ``with``.

Legend: B batch, L tokens (ViT: class token + patches), H heads kept, d head size.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.viz.maps import AttentionMap, AttentionMaps, check_choice

__all__ = ["SUPPORTED", "capture_huggingface", "self_attention_weights"]

SUPPORTED = "BertModel and the BERT heads built on it (e.g. all-MiniLM-L6-v2), ViTModel, ViTForImageClassification"
# kind -> (query projection, key projection, head size attribute) of its self-attention module
_PARTS = {"bert": ("query", "key", "attention_head_size"), "vit": ("q_proj", "k_proj", "head_dim")}


@contextlib.contextmanager
def capture_huggingface(
    model: nn.Module,
    *,
    layers: int | Sequence[int] | None = None,
    heads: int | Sequence[int] | None = None,
) -> Iterator[AttentionMaps]:
    """Record the self-attention maps of a Hugging Face BERT or ViT forward inside the ``with`` block.

    Each forward call adds one map per layer asked: kind ``"bert"`` (``(B, H, L, L)``, tokens) or
    ``"vit"`` (``(B, H, N, N)``, class token then patches: ``grid`` and ``prefix_tokens=1`` are set).
    Weights are float32 and detached, computed in float32 even under autocast, and equal the eager
    kernel's ``output_attentions`` in eval mode (in training those are taken after dropout; these
    are not).

    Args:
        model: a Hugging Face ``BertModel`` (or a BERT head over one) or ``ViTModel`` /
            ``ViTForImageClassification``, with any ``attn_implementation``.
        layers: the layers to record (an index or a list; negative from the last); None: all.
        heads: the heads to keep, in this order (same rules); None: all.

    Yields:
        An ``AttentionMaps`` that fills as the model runs.

    Raises:
        ValueError: a layer or head the model does not have (the message names what exists), or
            an architecture other than those in ``SUPPORTED`` (the message names its class).

    Example:
        >>> model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa")
        >>> with capture_huggingface(model, layers=-1) as maps:
        ...     model(**tokenizer(["a sentence"], return_tensors="pt"))
        >>> maps["bert", -1].shape  # (1, 12, L, L)
    """
    kind, modules = _self_attention_modules(model)
    chosen_layers = check_choice("layer", layers, len(modules), "layers")
    chosen_heads = check_choice("head", heads, modules[0].num_attention_heads, "heads")
    maps = AttentionMaps(prefix_tokens=1 if kind == "vit" else 0)
    handles: list[Any] = []
    try:
        for layer in chosen_layers:
            hook = _recorder(kind, layer, chosen_heads, maps)
            handles.append(modules[layer].register_forward_hook(hook, with_kwargs=True))
        if kind == "vit":
            handles += [m.register_forward_pre_hook(_grid_recorder(maps)) for m in _patch_embeddings(model)]
        yield maps
    finally:
        for handle in handles:
            handle.remove()


def self_attention_weights(
    module: nn.Module, kind: str, hidden: Tensor, mask: Tensor | None, heads: Sequence[int]
) -> Tensor:
    """softmax(Q K^T * scaling + mask) of the ``heads`` of one HF self-attention ``module`` on its input
    ``hidden`` (B, L, D): ``(B, H, L, L)`` float32, as the module's eager kernel computes it."""
    query, key, size = _PARTS[kind]
    head_size = getattr(module, size)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        q = _project_heads(getattr(module, query), hidden, heads, head_size)  # (B, H, L, d)
        k = _project_heads(getattr(module, key), hidden, heads, head_size)  # (B, H, L, d)
        scores = torch.matmul(q, k.transpose(2, 3)) * module.scaling  # (B, H, L, L)
        if mask is not None:
            scores = scores + _additive_mask(mask, heads)
        return torch.softmax(scores, dim=-1)


def _self_attention_modules(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The kind of ``model`` and its self-attention modules in layer order; unsupported models are refused."""
    from transformers.models.bert.modeling_bert import BertPreTrainedModel, BertSelfAttention
    from transformers.models.vit.modeling_vit import ViTAttention, ViTPreTrainedModel

    if isinstance(model, BertPreTrainedModel):
        if model.config.is_decoder:
            raise ValueError(f"{type(model).__name__} is a BERT decoder (is_decoder=True): supported are {SUPPORTED}")
        kind, modules = "bert", [m for m in model.modules() if isinstance(m, BertSelfAttention)]
    elif isinstance(model, ViTPreTrainedModel):
        kind, modules = "vit", [m for m in model.modules() if isinstance(m, ViTAttention)]
    else:
        raise ValueError(f"capture_huggingface does not support {type(model).__name__}: supported are {SUPPORTED}")
    if not modules:
        raise ValueError(f"{type(model).__name__} has no self-attention layers to capture")
    return kind, modules


def _recorder(kind: str, layer: int, heads: tuple[int, ...], maps: AttentionMaps):
    """A forward hook (with kwargs) that appends the map of this layer to ``maps``."""

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        hidden = args[0] if args else kwargs["hidden_states"]
        mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
        weights = self_attention_weights(module, kind, hidden, mask, heads)
        maps.maps.append(AttentionMap(kind, layer, heads, weights))

    return hook


def _project_heads(linear: nn.Linear, hidden: Tensor, heads: Sequence[int], head_size: int) -> Tensor:
    """The rows of ``heads`` of a projection (B, L, D) -> (B, H, L, d), in float32."""
    weight, bias = linear.weight.float(), None if linear.bias is None else linear.bias.float()
    if tuple(heads) != tuple(range(weight.shape[0] // head_size)):
        starts = torch.tensor(heads, device=weight.device)[:, None] * head_size
        rows = (starts + torch.arange(head_size, device=weight.device)).flatten()  # (H * d,)
        weight, bias = weight[rows], None if bias is None else bias[rows]
    projected = F.linear(hidden.float(), weight, bias)  # (B, L, H * d)
    return projected.view(*hidden.shape[:-1], len(heads), head_size).transpose(1, 2)  # (B, H, L, d)


def _additive_mask(mask: Tensor, heads: Sequence[int]) -> Tensor:
    """The mask as eager attention adds it: bool True (attend) -> 0, False -> the float32 minimum;
    a float mask as given. A per-head mask (B, H_all, L, L) keeps the rows of ``heads``."""
    if not isinstance(mask, Tensor):
        raise ValueError(f"attention mask of type {type(mask).__name__}: expected a tensor, bool or float, or None")
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=torch.float32, device=mask.device)
        mask = torch.where(mask, zero, torch.finfo(torch.float32).min)
    mask = mask.float()
    return mask[:, list(heads)] if mask.dim() == 4 and mask.shape[1] > 1 else mask


def _patch_embeddings(model: nn.Module) -> list[nn.Module]:
    from transformers.models.vit.modeling_vit import ViTPatchEmbeddings

    return [m for m in model.modules() if isinstance(m, ViTPatchEmbeddings)]


def _grid_recorder(maps: AttentionMaps):
    """A forward pre-hook on the patch embedding that sets ``maps.grid`` from the image's size."""

    def hook(module: nn.Module, args: tuple) -> None:
        height, width = args[0].shape[-2:]
        maps.grid = (height // module.patch_size[0], width // module.patch_size[1])

    return hook
