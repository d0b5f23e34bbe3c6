"""The record of captured attention: ``AttentionMap`` (one map) and ``AttentionMaps`` (all of a call).

Every capture in attnlab returns this one type, whatever the model: an attnlab Transformer, RNN
seq2seq, ViT, BERT or attention CNN, or a Hugging Face model run with its fused kernels. A map
says what it is (its ``kind`` and ``layer``), which heads it holds, and which axes its rows and
columns index, so that a figure can label it with the tokens or patches of ``AttentionMaps.labels``.

A translation's ``target`` axis holds the generated pieces (row t is the position that predicts piece t)
and its ``target_in`` axis the decoder's inputs at those positions (BOS, then the pieces one step behind).

Kinds and their tensors (B batch, H heads kept, Lq queries, Lk keys, C channels, h x w a feature map):

=================  ======================  =====================  ====================
kind               weights                 queries axis           keys axis
=================  ======================  =====================  ====================
``encoder_self``   ``(B, H, S, S)``        ``source``             ``source``
``decoder_self``   ``(B, H, T, T)``        ``target``             ``target_in``
``cross``          ``(B, H, T, S)``        ``target``             ``source``
``rnn_source``     ``(B, 1, T, S)``        ``target``             ``source``
``vit``            ``(B, H, N, N)``        ``patches``            ``patches``
``bert``           ``(B, H, L, L)``        ``tokens``             ``tokens``
``spatial_mask``   ``(B, 1, h, w)``        (the mask's own shape)
``se_gate``        ``(B, C)``              (the gate's own shape)
=================  ======================  =====================  ====================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from torch import Tensor

KINDS = ("encoder_self", "decoder_self", "cross", "rnn_source", "vit", "bert", "spatial_mask", "se_gate")
AXES = {
    "encoder_self": ("source", "source"),
    "decoder_self": ("target", "target_in"),
    "cross": ("target", "source"),
    "rnn_source": ("target", "source"),
    "vit": ("patches", "patches"),
    "bert": ("tokens", "tokens"),
    "spatial_mask": (None, None),
    "se_gate": (None, None),
}


@dataclass(frozen=True)
class AttentionMap:
    """One captured map.

    Attributes:
        kind: what it is, one of ``KINDS``.
        layer: the layer (or CNN block) it came from, 0-based.
        heads: the head indices kept, in the order of the weights' head dim; None for a CNN
            mask or gate, which have no heads.
        weights: ``(B, H, Lq, Lk)`` for attention (rows sum to 1 over the keys a query may see),
            or the mask's or gate's own shape (module docstring).
    """

    kind: str
    layer: int
    heads: tuple[int, ...] | None
    weights: Tensor

    @property
    def queries(self) -> str | None:
        """The axis the rows index (``"source"``, ``"target"``, ``"patches"``, ``"tokens"``), or None."""
        return AXES[self.kind][0]

    @property
    def keys(self) -> str | None:
        """The axis the columns index, or None."""
        return AXES[self.kind][1]

    @property
    def name(self) -> str:
        """``kind.layer``, e.g. ``cross.5``."""
        return f"{self.kind}.{self.layer}"


@dataclass
class AttentionMaps:
    """The maps of one call, in the order the model computed them, and the labels of their axes.

    Index by kind and layer: ``maps["cross", 5]`` is the weights tensor of that map (negative
    layers count from the last layer captured of the kind).

    Attributes:
        maps: the captured maps.
        labels: per axis name (``"source"``, ``"target"``, ``"target_in"``, ``"patches"``, ``"tokens"``) the labels
            of each batch item, ``labels[axis][b]`` a list of strings (filled by the inference API
            and ``attnlab.capture`` for tokenized inputs; empty when unknown).
        grid: the patch grid ``(gh, gw)`` of an image model's patch tokens, or None.
        prefix_tokens: tokens before the patches on the ``patches`` axis (1: a class token).
    """

    maps: list[AttentionMap] = field(default_factory=list)
    labels: dict[str, list[list[str]]] = field(default_factory=dict)
    grid: tuple[int, int] | None = None
    prefix_tokens: int = 0

    def __iter__(self) -> Iterator[AttentionMap]:
        return iter(self.maps)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, key: tuple[str, int]) -> Tensor:
        return self.get(*key).weights

    def get(self, kind: str, layer: int) -> AttentionMap:
        """The map of ``kind`` at ``layer``; a ``KeyError`` names what was captured."""
        found = self.select(kind)
        layers = sorted({m.layer for m in found})
        if layer < 0 and layers:
            layer = layers[layer] if -len(layers) <= layer else layer
        matches = [m for m in found if m.layer == layer]
        if len(matches) != 1:
            captured = ", ".join(m.name for m in self.maps) or "nothing"
            many = f" ({len(matches)} calls: use select)" if matches else ""
            raise KeyError(f"no single map {kind}.{layer}{many}; captured: {captured}")
        return matches[0]

    def select(self, kind: str | None = None, layer: int | None = None) -> list[AttentionMap]:
        """The maps of a kind and/or layer, in capture order."""
        return [m for m in self.maps if (kind is None or m.kind == kind) and (layer is None or m.layer == layer)]

    @property
    def kinds(self) -> list[str]:
        """The kinds captured, in capture order."""
        return list(dict.fromkeys(m.kind for m in self.maps))

    def layers(self, kind: str) -> list[int]:
        """The layers captured of ``kind``, ascending."""
        return sorted({m.layer for m in self.select(kind)})

    def item(self, index: int) -> AttentionMaps:
        """Batch item ``index`` alone (batch dim kept, size 1), each attention map cut to the
        lengths of its labels where they are known (padding dropped)."""
        maps = [replace(m, weights=self._cut(m, m.weights[index : index + 1], index)) for m in self.maps]
        labels = {axis: [rows[index]] for axis, rows in self.labels.items()}
        return AttentionMaps(maps, labels, self.grid, self.prefix_tokens)

    def float_cpu(self) -> AttentionMaps:
        """Every map's weights as float32 on the CPU (what figures, tables and JSON read)."""
        maps = [replace(m, weights=m.weights.float().cpu()) for m in self.maps]
        return AttentionMaps(maps, self.labels, self.grid, self.prefix_tokens)

    def axis_labels(self, axis: str | None, index: int = 0) -> list[str] | None:
        """The labels of batch item ``index`` along ``axis``, or None when unknown."""
        rows = self.labels.get(axis) if axis else None
        return None if not rows else list(rows[index])

    def _cut(self, m: AttentionMap, weights: Tensor, index: int) -> Tensor:
        if m.queries is None:
            return weights
        rows, cols = self.axis_labels(m.queries, index), self.axis_labels(m.keys, index)
        if rows is not None:
            weights = weights[..., : len(rows), :]
        if cols is not None:
            weights = weights[..., : len(cols)]
        return weights


def check_choice(name: str, asked: Sequence[int] | None, count: int, what: str) -> tuple[int, ...]:
    """``asked`` indices (negative from the end) as non-negative ones, or all ``count``; a ``ValueError``
    names the index out of range and what exists (``what``: e.g. ``"decoder layers"``)."""
    if asked is None:
        return tuple(range(count))
    chosen = []
    for index in [asked] if isinstance(asked, int) else asked:
        if not isinstance(index, int) or isinstance(index, bool) or not -count <= index < count:
            raise ValueError(f"{name} {index!r} does not exist: the model has {count} {what} (0..{count - 1})")
        chosen.append(index % count)
    return tuple(dict.fromkeys(chosen))
