"""Loading Hugging Face and timm Vision Transformer weights into ``attnlab.models.ViT``, and back.

Our ``ViT`` is laid out as timm's ``VisionTransformer`` except inside the blocks, which are the
shared ``EncoderLayer`` (``self_attn`` is the core ``MultiHeadAttention``, torch's layout: one
``in_proj`` holding [W_q; W_k; W_v]; the MLP is ``ffn``). Keys, with
``i`` the block index (Hugging Face ``transformers`` 5.x names, read from the installed version;
4.x used ``vit.encoder.layer.i.attention.attention.query`` etc. and is not mapped):

=================================  ===============================  ==============================================
attnlab ``ViT``                    timm ``VisionTransformer``       HF ``ViTForImageClassification``
=================================  ===============================  ==============================================
``cls_token`` (1, 1, E)            ``cls_token``                    ``vit.embeddings.cls_token``
``pos_embed`` (1, 1 + N, E)        ``pos_embed``                    ``vit.embeddings.position_embeddings``
``patch_embed.proj.{weight,bias}`` ``patch_embed.proj.*``           ``vit.embeddings.patch_embeddings.projection.*``
``blocks.i.norm1.*``               ``blocks.i.norm1.*``             ``vit.layers.i.layernorm_before.*``
``blocks.i.self_attn.in_proj_*``   ``blocks.i.attn.qkv.*``          ``vit.layers.i.attention.{q,k,v}_proj.*``
  (3E, E) = [W_q; W_k; W_v]          (3E, E), same order              three (E, E), concatenated in that order
``blocks.i.self_attn.out_proj.*``  ``blocks.i.attn.proj.*``         ``vit.layers.i.attention.o_proj.*``
``blocks.i.norm2.*``               ``blocks.i.norm2.*``             ``vit.layers.i.layernorm_after.*``
``blocks.i.ffn.fc1.*`` / ``fc2.*`` ``blocks.i.mlp.fc1.*`` / ``fc2`` ``vit.layers.i.mlp.fc1.*`` / ``fc2.*``
``norm.*`` (pool "cls")            ``norm.*``                       ``vit.layernorm.*``
``fc_norm.*`` (pool "mean")        ``fc_norm.*`` (global_pool avg)  (none: HF pools the class token)
``head.*``                         ``head.*``                       ``classifier.*``
=================================  ===============================  ==============================================

A bare ``ViTModel`` has the HF keys without ``vit.`` and no ``classifier``; its ``pooler.dense``
(a tanh layer used by no classifier) has no counterpart and is dropped on import. Numerics agree
when the configs agree: HF's ``hidden_act="gelu"`` is the exact (erf) GELU, like ours; HF's
``layer_norm_eps`` defaults to 1e-12 where timm and our ``ViTConfig`` use 1e-6, so the converters
below carry it across. With dropout > 0 the training-time graphs differ slightly (we drop inside
the MLP, as timm does; HF does not).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from attnlab.models.vit import ViT, ViTConfig

if TYPE_CHECKING:  # transformers is a test / interop dependency only
    import transformers

logger = logging.getLogger(__name__)

StateDict = Mapping[str, Tensor]

# Per-block keys: ours -> HF (after "layers.i."); q/k/v are handled apart.
_HF_BLOCK = {
    "norm1": "layernorm_before",
    "self_attn.out_proj": "attention.o_proj",
    "norm2": "layernorm_after",
    "ffn.fc1": "mlp.fc1",
    "ffn.fc2": "mlp.fc2",
}
# Top-level keys: ours -> HF (after the ``vit.`` prefix, except the classifier).
_HF_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj": "embeddings.patch_embeddings.projection",
    "norm": "layernorm",
}
_HF_DROPPED = ("pooler.", "embeddings.mask_token")
_TIMM_BLOCK = {"self_attn.out_proj": "attn.proj", "ffn.fc1": "mlp.fc1", "ffn.fc2": "mlp.fc2"}
_BLOCK_KEY = re.compile(r"^(?:blocks|layers)\.(\d+)\.(.+)\.(weight|bias|in_proj_weight|in_proj_bias)$")


def hf_to_attnlab(state_dict: StateDict) -> dict[str, Tensor]:
    """Keys of a HF ``ViTForImageClassification`` or ``ViTModel`` state dict renamed to ours, q/k/v fused.

    Raises:
        ValueError: naming the first key that has no counterpart.
    """
    prefix = "vit." if any(k.startswith("vit.") for k in state_dict) else ""
    to_ours = {hf: ours for ours, hf in _HF_TOP.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith("classifier."):
            out["head." + key.removeprefix("classifier.")] = value
            continue
        name = key.removeprefix(prefix)
        if name.startswith(_HF_DROPPED):
            logger.info("dropping %s: our ViT has no counterpart", key)
            continue
        block = _BLOCK_KEY.match(name)
        if block:
            index, module, param = int(block[1]), block[2], block[3]
            if module in ("attention.q_proj", "attention.k_proj", "attention.v_proj"):
                qkv.setdefault((index, param), {})[module[10]] = value
            else:
                out[f"blocks.{index}.{_invert(_HF_BLOCK, module, key)}.{param}"] = value
            continue
        module, _, param = name.rpartition(".")
        if name in to_ours:  # parameters without a module (cls_token, position_embeddings)
            out[to_ours[name]] = value
        elif module in to_ours:
            out[f"{to_ours[module]}.{param}"] = value
        else:
            raise ValueError(f"Hugging Face key {key!r} has no counterpart in attnlab's ViT")
    for (index, param), parts in qkv.items():
        out[f"blocks.{index}.self_attn.in_proj_{param}"] = _fuse_qkv(parts, index, param)
    return out


def attnlab_to_hf(state_dict: StateDict, *, prefix: str = "vit.") -> dict[str, Tensor]:
    """Our ViT's state dict as HF keys: ``prefix="vit."`` for ``ViTForImageClassification``,
    ``""`` for a ``ViTModel`` (built with ``add_pooling_layer=False``)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("head."):
            if not prefix:
                raise ValueError(f"{key!r}: a ViTModel has no classifier; export with prefix='vit.' or num_classes=0")
            out["classifier." + key.removeprefix("head.")] = value
            continue
        if key.startswith("fc_norm."):
            raise ValueError(f"{key!r}: HF's ViT pools the class token; pool='mean' models do not map")
        block = _BLOCK_KEY.match(key)
        if block:
            index, module, param = int(block[1]), block[2], block[3]
            out.update(_hf_block_params(prefix, index, module, param, value, key))
            continue
        module, _, param = key.rpartition(".")
        if key in _HF_TOP:
            out[prefix + _HF_TOP[key]] = value
        elif module in _HF_TOP:
            out[f"{prefix}{_HF_TOP[module]}.{param}"] = value
        else:
            raise ValueError(f"attnlab key {key!r} has no Hugging Face counterpart")
    return out


def timm_to_attnlab(state_dict: StateDict) -> dict[str, Tensor]:
    """Keys of a timm ``VisionTransformer`` (class token, no register tokens) renamed to ours."""
    to_ours = {timm: ours for ours, timm in _TIMM_BLOCK.items()}
    return {
        _rename_block(key, to_ours).replace(".attn.qkv.", ".self_attn.in_proj_"): v for key, v in state_dict.items()
    }


def attnlab_to_timm(state_dict: StateDict) -> dict[str, Tensor]:
    """Our ViT's state dict as timm ``VisionTransformer`` keys."""
    return {
        _rename_block(key.replace(".self_attn.in_proj_", ".attn.qkv."), _TIMM_BLOCK): v for key, v in state_dict.items()
    }


def vit_config_from_hf(config: transformers.ViTConfig) -> ViTConfig:
    """Our ``ViTConfig`` for a HF ``ViTConfig`` (square images and patches, exact GELU, q/k/v biases)."""
    if config.hidden_act != "gelu" or not config.qkv_bias:
        raise ValueError(
            f"only hidden_act='gelu' (exact) with qkv_bias=True maps, "
            f"got {config.hidden_act!r}, qkv_bias={config.qkv_bias}"
        )
    return ViTConfig(
        image_size=_square(config.image_size, "image_size"),
        patch_size=_square(config.patch_size, "patch_size"),
        in_channels=config.num_channels,
        num_classes=config.num_labels,
        embed_dim=config.hidden_size,
        depth=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        mlp_ratio=config.intermediate_size / config.hidden_size,
        dropout=config.hidden_dropout_prob,
        attn_dropout=config.attention_probs_dropout_prob,
        layer_norm_eps=config.layer_norm_eps,
    )


def hf_config_from_vit(config: ViTConfig, **hf_kwargs: Any) -> transformers.ViTConfig:
    """A HF ``ViTConfig`` matching ours; ``hf_kwargs`` (e.g. ``attn_implementation="eager"``) pass through."""
    from transformers import ViTConfig as HFViTConfig

    if config.pool != "cls":
        raise ValueError(f"HF's ViT pools the class token; pool={config.pool!r} does not map")
    if config.mlp_dim != config.embed_dim * config.mlp_ratio:
        raise ValueError(f"mlp_ratio ({config.mlp_ratio}) must give a whole MLP size for embed_dim {config.embed_dim}")
    return HFViTConfig(
        image_size=config.image_size,
        patch_size=config.patch_size,
        num_channels=config.in_channels,
        num_labels=config.num_classes,
        hidden_size=config.embed_dim,
        num_hidden_layers=config.depth,
        num_attention_heads=config.num_heads,
        intermediate_size=config.mlp_dim,
        hidden_act="gelu",
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.attn_dropout,
        layer_norm_eps=config.layer_norm_eps,
        qkv_bias=True,
        **hf_kwargs,
    )


def vit_from_hf(model: transformers.ViTForImageClassification | transformers.ViTModel) -> ViT:
    """Our ``ViT`` with the config and a copy of the weights of a HF ``ViTForImageClassification``
    (or ``ViTModel``, giving ``num_classes=0``)."""
    config = vit_config_from_hf(model.config)
    if not any(k.startswith("classifier.") for k in model.state_dict()):
        config.num_classes = 0
    ours = ViT(config)
    ours.load_state_dict(hf_to_attnlab(model.state_dict()))
    ref = next(model.parameters())
    return ours.to(device=ref.device, dtype=ref.dtype)


def vit_to_hf(model: ViT, **hf_kwargs: Any) -> transformers.ViTForImageClassification:
    """A HF ``ViTForImageClassification`` with our model's config and a copy of its weights."""
    from transformers import ViTForImageClassification

    hf = ViTForImageClassification(hf_config_from_vit(model.config, **hf_kwargs))
    hf.load_state_dict(attnlab_to_hf(model.state_dict()))
    ref = next(model.parameters())
    return hf.to(device=ref.device, dtype=ref.dtype).train(model.training)


def _hf_block_params(prefix: str, index: int, module: str, param: str, value: Tensor, key: str) -> dict[str, Tensor]:
    """One of our block parameters as HF's; the fused in_proj is split into q, k and v."""
    base = f"{prefix}layers.{index}."
    if module == "self_attn" and param.startswith("in_proj_"):
        kind = param.removeprefix("in_proj_")
        q, k, v = value.chunk(3, dim=0)  # (3E, E) -> 3 x (E, E), or (3E,) -> 3 x (E,)
        return {f"{base}attention.{name}_proj.{kind}": part for name, part in zip("qkv", (q, k, v))}
    if module not in _HF_BLOCK:
        raise ValueError(f"attnlab key {key!r} has no Hugging Face counterpart")
    return {f"{base}{_HF_BLOCK[module]}.{param}": value}


def _fuse_qkv(parts: dict[str, Tensor], index: int, param: str) -> Tensor:
    """[W_q; W_k; W_v] (or the biases) of block ``index`` concatenated along dim 0."""
    missing = [name for name in "qkv" if name not in parts]
    if missing:
        raise ValueError(f"block {index} lacks the {param} of the {missing} projection(s)")
    return torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)  # (3E, E) or (3E,)


def _invert(mapping: dict[str, str], hf_module: str, key: str) -> str:
    for ours, hf in mapping.items():
        if hf == hf_module:
            return ours
    raise ValueError(f"Hugging Face key {key!r} has no counterpart in attnlab's ViT")


def _rename_block(key: str, modules: dict[str, str]) -> str:
    block = _BLOCK_KEY.match(key)
    if block and block[2] in modules:
        return f"blocks.{block[1]}.{modules[block[2]]}.{block[3]}"
    return key


def _square(value: int | tuple[int, int] | list[int], name: str) -> int:
    if isinstance(value, int):
        return value
    if len(value) != 2 or value[0] != value[1]:
        raise ValueError(f"only square {name} maps, got {value}")
    return int(value[0])
