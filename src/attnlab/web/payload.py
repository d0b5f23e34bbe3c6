"""Attention maps as compact JSON: 8-bit weights with one scale per map, base64-encoded.

A weight w in [0, 1] travels as ``q = round(w / scale)`` (uint8), ``scale = max(w) / 255``; the page
reads ``w = q * scale`` (error at most ``scale / 2``). Rollout (Abnar & Zuidema 2020) is rolled here,
from every layer, fused over heads and per head, and sent as class-token maps on the patch grid.

Shapes: H heads, Lq queries, Lk keys, N tokens (class token + gh * gw patches).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from attnlab.viz.maps import AttentionMap, AttentionMaps
from attnlab.viz.rollout import attention_rollout, class_token_map

__all__ = ["decode_weights", "encode_weights", "map_payload", "rollout_payload"]


def encode_weights(weights: Tensor) -> dict:
    """Non-negative ``weights`` of any shape as ``{"shape", "scale", "data"}`` (uint8, base64)."""
    w = weights.detach().float().cpu().clamp_min(0)
    peak = float(w.max()) if w.numel() else 0.0
    scale = peak / 255 if peak > 0 else 1 / 255
    q = torch.round(w / scale).to(torch.uint8)
    data = base64.b64encode(q.numpy().tobytes()).decode("ascii")
    return {"shape": list(w.shape), "scale": scale, "data": data}


def decode_weights(payload: dict) -> Tensor:
    """The float32 tensor of an ``encode_weights`` payload."""
    q = np.frombuffer(base64.b64decode(payload["data"]), dtype=np.uint8)
    return torch.from_numpy(q.astype(np.float32) * payload["scale"]).reshape(payload["shape"])


def map_payload(m: AttentionMap, heads: Sequence[int] | None = None) -> dict:
    """One map of batch item 0: ``(H, Lq, Lk)`` for attention (only ``heads``, positions in
    ``m.heads``, when given), or the mask's or gate's own shape."""
    weights = m.weights[0]  # (H, Lq, Lk), (1, h, w) or (C,)
    kept = m.heads
    if heads is not None and m.heads is not None:
        weights = weights[list(heads)]  # (H', Lq, Lk)
        kept = tuple(m.heads[h] for h in heads)
    return {"kind": m.kind, "layer": m.layer, "heads": None if kept is None else list(kept), **encode_weights(weights)}


def rollout_payload(maps: AttentionMaps) -> dict | None:
    """The class-token rollout of every ``vit`` layer of batch item 0, fused by the mean over heads
    (``fused``, ``(gh, gw)``) and of each head alone (``heads``, ``(H, gh, gw)``); None without a grid."""
    layers = [maps.get("vit", layer).weights[0] for layer in maps.layers("vit")]  # L x (H, N, N)
    if not layers or maps.grid is None or maps.prefix_tokens != 1:
        return None
    fused = class_token_map(attention_rollout(layers), maps.grid)  # (gh, gw)
    heads = range(layers[0].shape[0])
    alone = [attention_rollout([w[h : h + 1] for w in layers]) for h in heads]  # H x (N, N)
    per_head = torch.stack([class_token_map(rolled, maps.grid) for rolled in alone])
    return {"fused": encode_weights(fused), "heads": encode_weights(per_head)}  # (gh, gw), (H, gh, gw)
