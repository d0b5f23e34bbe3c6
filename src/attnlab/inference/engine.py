"""The decoding engine: a model's incremental decoding, made fast without changing its results.

``greedy_search`` and ``beam_search`` (``attnlab.decoding``) drive any model that speaks their
small protocol (``start_state`` / ``step`` / ``reorder_state``). A ``DecodingEngine`` wraps such a
model and speaks the same protocol; for a ``Transformer`` it adds four speed paths, each on by
default where it pays and off with one argument:

- **plain steps**: a decoding step of one token per row, in evaluation mode and without attention
  weights, goes through ``DecoderLayer.step`` (the same products and attention kernels as
  ``forward``, without its per-call checks and options);
- **packed weights**: on CPU those steps multiply by copies of the decoder's weights packed once
  for thin products (``attnlab.inference.packed``), fp32 or bf16 under autocast; on a GPU under
  autocast, by copies in autocast's dtype;
- **beam pools**: beam hypotheses keep their keys where they were written
  (``attnlab.inference.beam_cache``) instead of copying them to their children every step;
- **fused steps**: on CPU, searches of at most ``Thresholds.cpu_thin_max_rows`` rows run whole
  decoder steps as a few compiled-kernel calls per layer (``attnlab.inference.fused_decoder``),
  where the thin-product and fused step attention kernels both run; they take the place of the
  three paths above. Under bf16 autocast, searches of any row count run on them with bf16
  products where oneDNN's bf16 products run (a CPU with bf16 instructions).

With ``int8=True`` the plain or fused steps multiply by int8 copies of the weights instead
(``attnlab.inference.quantized``: PyTorch's dynamic quantisation), a faster decoding whose
scores are within the int8 rounding of fp32's; the encoder stays fp32.

The engine holds every inference cache (the packed copies, the pools); the model holds none.
Packed copies live as long as the engine: after the model's weights change (a training step),
make a new engine, as ``Translator`` does for each evaluation. With every path off, the engine
decodes exactly as the model does alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnlab.functional.kernels import onednn, thin
from attnlab.inference import fused_decoder
from attnlab.inference.beam_cache import BeamDecoderCache
from attnlab.inference.fused_decoder import FusedDecoder, FusedState
from attnlab.inference.packed import PackedWeights
from attnlab.inference.quantized import QuantizedWeights, check_available
from attnlab.layers.feedforward import LinearFn
from attnlab.models.transformer import SearchState, Transformer


class DecodingEngine:
    """Greedy and beam search's view of a model, with the speed paths of a ``Transformer``.

    Other models (the RNN seq2seq ones) pass through unchanged.

    Args:
        model: a model with the protocol of ``attnlab.decoding.search.IncrementalDecoder``.
        plain_steps: decode one token per row through ``DecoderLayer.step`` where every
            attention layer is plain (``MultiHeadAttention.is_plain``) and the model is in
            evaluation mode.
        pack_weights: on CPU, multiply plain steps by packed copies of the weights (on a GPU
            under autocast, by copies in its dtype); None packs where it can (the thin kernel or
            oneDNN, ``attnlab.inference.packed``).
        beam_pools: keep beam hypotheses' keys in per-sentence pools.
        int8: multiply plain steps by int8 copies of the weights (CPU, a ``Transformer`` in
            evaluation mode; implies ``plain_steps``).
        fused_steps: run CPU searches (fp32 outside autocast, or ``int8``) of at most
            ``Thresholds.cpu_thin_max_rows`` rows on ``FusedDecoder``, and those under bf16
            autocast of any row count where oneDNN's bf16 products run; None where it can
            (``fused_decoder.obstacles`` finds nothing, ``plain_steps`` on); True to insist, for
            any row count.

    Raises:
        ValueError: ``int8`` for a model that is not a ``Transformer``, not on CPU, or with
            ``plain_steps`` off (the message names which); ``fused_steps=True`` for a model
            ``FusedDecoder`` cannot run here (the message lists why).
        RuntimeError: ``int8`` where this PyTorch build lacks a CPU quantisation engine.

    Example:
        >>> engine = DecodingEngine(model.eval())
        >>> result = beam_search(engine, src, beam_size=5)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        plain_steps: bool = True,
        pack_weights: bool | None = None,
        beam_pools: bool = True,
        int8: bool = False,
        fused_steps: bool | None = None,
    ) -> None:
        self.model = model
        is_transformer = isinstance(model, Transformer)
        if int8:
            _check_int8(model, plain_steps)
        self.int8 = int8
        self.plain_steps = plain_steps and is_transformer
        self.pack_weights = self.plain_steps and (
            onednn.available() or thin.available() if pack_weights is None else pack_weights
        )
        self.beam_pools = beam_pools and is_transformer
        self._packed: PackedWeights | None = None
        self.fused_steps = self._resolve_fused(fused_steps, plain_steps)
        self._any_rows = fused_steps is True  # insisting: past the thin kernel's row threshold too
        self._fused: dict[bool, FusedDecoder] = {}  # by bf16 products or not
        self._fuses_bf16 = self.fused_steps and not int8 and not fused_decoder.obstacles(self.model, bf16=True)

    # --- the protocol of attnlab.decoding.search, delegated where the engine adds nothing ----
    @property
    def pad_id(self) -> int:
        return self.model.pad_id

    @property
    def bos_id(self) -> int:
        return self.model.bos_id

    @property
    def eos_id(self) -> int:
        return self.model.eos_id

    def padding_mask(self, tokens: Tensor) -> Tensor | None:
        return self.model.padding_mask(tokens)

    def start_state(
        self, src: Tensor, src_key_padding_mask: Tensor | None = None, *, repeat: int = 1, use_cache: bool = True
    ) -> Any:
        """The model's start state; a fused search gets a ``FusedState``, a beam search (``repeat``
        k > 1) beam pools."""
        fused = use_cache and self._fuses(src, repeat)
        bf16 = fused and torch.is_autocast_enabled("cpu")
        if not (fused or (self.beam_pools and use_cache and repeat > 1)):
            return self.model.start_state(src, src_key_padding_mask, repeat=repeat, use_cache=use_cache)
        if src_key_padding_mask is None:
            src_key_padding_mask = self.model.padding_mask(src)
        memory = self.model.encode(src, src_key_padding_mask)  # (B, S, D), one row per sentence
        if fused:
            if bf16 not in self._fused:
                self._fused[bf16] = FusedDecoder(self.model, int8=self.int8, bf16=bf16)
            return self._fused[bf16].start(memory, src_key_padding_mask, repeat=repeat)
        cache = BeamDecoderCache(len(self.model.decoder_layers), beam_size=repeat)
        return SearchState(memory, src_key_padding_mask, cache)

    def step(self, state: Any, tokens: Tensor) -> tuple[Tensor, Any]:
        """Feed ``tokens (B,)``: a fused or plain step where it applies, else the model's own ``step``."""
        if isinstance(state, FusedState):
            return self._fused[state.bf16].step(state, tokens), state
        if not self._steps_plainly(state):
            if self.int8:
                raise RuntimeError(
                    "int8 decoding runs plain cached steps of a model in evaluation mode; got "
                    f"model.training={self.model.training}, state {type(state).__name__} "
                    f"(cache {getattr(state, 'cache', None) is not None}) and attention layers that are "
                    f"{'' if self._plain_layers() else 'not '}plain: call model.eval() and search with the cache"
                )
            return self.model.step(state, tokens)
        return self._plain_step(state, tokens), state

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        if isinstance(state, FusedState):
            self._fused[state.bf16].reorder(state, index)
            return state
        return self.model.reorder_state(state, index)

    # --- the speed paths --------------------------------------------------------------------
    def _resolve_fused(self, fused_steps: bool | None, plain_steps: bool) -> bool:
        if fused_steps is False:
            return False
        found = fused_decoder.obstacles(self.model, int8=self.int8)
        if not plain_steps:
            found.append("plain_steps=False")
        if fused_steps and found:
            raise ValueError("fused_steps=True, but: " + "; ".join(found))
        return not found

    def _fuses(self, src: Tensor, repeat: int) -> bool:
        """Whether a search of ``src (B, S)`` with ``repeat`` rows per sentence runs on the fused
        decoder: fp32 ones up to the thin kernel's rows, bf16 autocast ones of any size."""
        if not self.fused_steps or self.model.training or torch.is_grad_enabled() or src.device.type != "cpu":
            return False
        if torch.is_autocast_enabled("cpu"):
            return self._fuses_bf16 and torch.get_autocast_dtype("cpu") == torch.bfloat16
        return self._any_rows or src.shape[0] * repeat <= fused_decoder.max_rows()

    def _steps_plainly(self, state: Any) -> bool:
        model = self.model
        return (
            self.plain_steps
            and isinstance(state, SearchState)
            and state.cache is not None
            and not model.training
            and self._plain_layers()
        )

    def _plain_layers(self) -> bool:
        return all(layer.self_attn.is_plain and layer.cross_attn.is_plain for layer in self.model.decoder_layers)

    def _plain_step(self, state: SearchState, tokens: Tensor) -> Tensor:
        """Logits ``(B', V)`` of one new token per row through ``DecoderLayer.step``."""
        model, cache, memory = self.model, state.cache, state.memory
        x = model.embed_target(tokens[:, None], len(cache))  # (B', 1, D)
        linear = self._linear(x)
        padding = state.memory_key_padding_mask
        allowed = None if padding is None else ~padding[:, None, None, :]  # (B, 1, 1, S)
        for layer, self_cache, cross_cache in zip(model.decoder_layers, cache.self_attn, cache.cross_attn):
            x = layer.step(x, memory, self_cache, cross_cache, allowed, linear=linear)
        return linear(model.decoder_norm(x[:, -1]), model.output.weight, model.output.bias)  # (B', V)

    def _linear(self, x: Tensor) -> LinearFn:
        """The products of a plain step on ``x (B', 1, D)``: int8 or packed copies on CPU, copies in
        autocast's dtype on a GPU under autocast, else ``F.linear``."""
        copies = x.device.type == "cpu" or torch.is_autocast_enabled(x.device.type)
        if not (self.int8 or (self.pack_weights and copies)) or torch.is_grad_enabled():
            return F.linear
        if self._packed is None:  # the first search's rows: a layout hint
            self._packed = QuantizedWeights(rows=x.shape[0]) if self.int8 else PackedWeights(rows=x.shape[0])
        return self._packed.linear


def _check_int8(model: nn.Module, plain_steps: bool) -> None:
    """Raise unless ``model`` can decode with int8 products: a ``Transformer`` on CPU, plain steps on."""
    if not isinstance(model, Transformer):
        raise ValueError(f"int8 decoding is for Transformer models; got a {type(model).__name__}")
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"int8 decoding runs on CPU; the model is on {device}")
    if not plain_steps:
        raise ValueError("int8 decoding multiplies in plain steps: plain_steps=False cannot be int8")
    check_available()
