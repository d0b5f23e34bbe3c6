"""``Classifier``: a trained image classifier and the image spec it was trained on, as one object
that turns image files, Pillow images or tensors into top-k labels (and, for a ViT, its attention).

Built by :func:`attnlab.load` from a run directory, or directly from a model in memory.

Shapes: B images, C channels, H x W image, K classes, L blocks, h heads, N tokens (1 + patches).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from attnlab.data.image_transforms import preprocess_batch
from attnlab.data.images import ImageInputError, ImageSpec, load_image
from attnlab.models.registry import MODEL_REGISTRY
from attnlab.models.vit import ViT
from attnlab.training.devices import autocast_to
from attnlab.viz.capture import CaptureSpec, capture
from attnlab.viz.maps import AttentionMaps

__all__ = ["Classification", "Classifier", "ImageInput"]

ImageInput = str | Path | Image.Image | Tensor

_MODES = {1: "L", 3: "RGB"}


@dataclass
class Classification:
    """The top-k labels of one image and, on request, the attention behind them.

    Attributes:
        top: ``(class, probability)`` pairs, most probable first.
        attention: the maps captured for this image (batch dim 1): a ViT's ``vit`` maps
            ``(1, h, N, N)`` (token 0 the class token, ``grid`` the patch grid), an attention CNN's
            ``se_gate`` and ``spatial_mask`` per block; None unless asked for.
    """

    top: list[tuple[str, float]]
    attention: AttentionMaps | None = None


def _model_type(model: nn.Module) -> str:
    """The registry's name for ``model`` (``"vit"``, ``"cnn"``), else its class name."""
    names = [name for name, kind in MODEL_REGISTRY.items() if isinstance(model, kind.model_class)]
    return names[0] if names else type(model).__name__


class Classifier:
    """Top-k classification with a trained ViT or attention CNN.

    Args:
        model: the classifier; used as it is, never copied.
        spec: the channels, size, classes and normalisation it was trained with.
        precision: the autocast dtype it runs under (``torch.bfloat16``), or None for none of
            its own (an enclosing autocast still applies).

    Example:
        >>> classifier = attnlab.load("runs/digits_vit")
        >>> classifier.classify("seven.png", top_k=3)
    """

    def __init__(self, model: nn.Module, spec: ImageSpec, *, precision: torch.dtype | None = None) -> None:
        self.model = model
        self.spec = spec
        self.precision = precision

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (inputs are moved there)."""
        return next(self.model.parameters()).device

    def classify(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        top_k: int = 3,
        attention: bool | CaptureSpec = False,
        resize: bool = True,
    ) -> list[tuple[str, float]] | Classification | list[list[tuple[str, float]]] | list[Classification]:
        """The ``top_k`` most probable classes of each image, read as the model was trained.

        Args:
            images: an image file, a Pillow image or a tensor, or a sequence of them. Files and
                Pillow images are converted to the spec's channels and resized to its size; a
                uint8 tensor ``([B,] C, H, W)`` holds pixels (scaled and normalised here), a float
                tensor holds model input (already normalised). A 4-d tensor is a batch.
            top_k: classes returned per image (at most K).
            attention: return :class:`Classification` objects holding the attention maps:
                ``True`` for all, or a ``CaptureSpec`` choosing layers, heads and kinds.
            resize: False makes a file or Pillow image of another size an error.

        Returns:
            For one image, its ``(class, probability)`` list; for a sequence or a batch, one per
            image in order. :class:`Classification` objects with ``attention``.

        Raises:
            ValueError: ``top_k`` below 1, a tensor of the wrong shape, or a layer, head or kind
                of ``attention`` the model does not have (the message names what exists).
            ImageInputError: a file or image that cannot be read or converted.
            TypeError: ``images`` (or one of them) of another type, e.g. an int (the message names it).
        """
        if top_k < 1:
            raise ValueError(f"top_k ({top_k}) must be >= 1")
        spec = CaptureSpec.of(attention)
        single = isinstance(images, (str, Path, Image.Image)) or (isinstance(images, Tensor) and images.dim() == 3)
        batch = self._batch(images, resize)  # (B, C, H, W)
        results = self._classify_batch(batch, top_k, spec)
        return results[0] if single else results

    def _classify_batch(self, batch: Tensor, top_k: int, spec: CaptureSpec | None) -> list:
        recording = contextlib.nullcontext() if spec is None else capture(self.model, **vars(spec))
        with torch.no_grad(), self._autocast(), recording as maps:
            logits = self.model(batch.to(self.device))  # (B, K)
        probs = torch.softmax(logits.float(), dim=-1).cpu()  # (B, K)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # (B, k)
        tops = [
            [(self.spec.classes[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)
        ]
        if maps is None:
            return tops
        maps = self._described(maps.float_cpu(), batch)
        return [Classification(top, maps.item(b)) for b, top in enumerate(tops)]

    def _described(self, maps: AttentionMaps, batch: Tensor) -> AttentionMaps:
        """``maps`` with a ViT's patch grid and token labels."""
        if isinstance(self.model, ViT):
            gh, gw = self.model.patch_embed.patch_grid(batch.shape[2], batch.shape[3])
            tokens = ["[CLS]"] + [f"({r},{c})" for r in range(gh) for c in range(gw)]
            maps.grid, maps.prefix_tokens = (gh, gw), self.model.num_prefix_tokens
            maps.labels["patches"] = [tokens] * batch.shape[0]
        return maps

    def _batch(self, images: ImageInput | Sequence[ImageInput], resize: bool) -> Tensor:
        """Model input ``(B, C, H, W)`` from any accepted form."""
        if isinstance(images, Tensor):
            return self._tensor(images)
        if isinstance(images, (str, Path, Image.Image)):
            items = [images]
        elif isinstance(images, Iterable):
            items = list(images)
        else:
            raise _not_an_image(images)
        if not items:
            raise ValueError("classify needs at least one image, got an empty sequence")
        return torch.cat([self._one(item, resize) for item in items])

    def _one(self, image: ImageInput, resize: bool) -> Tensor:
        """``(1, C, H, W)`` from one file, Pillow image or tensor."""
        spec = self.spec
        if isinstance(image, Tensor):
            return self._tensor(image)
        if isinstance(image, Image.Image):
            return preprocess_batch(self._pixels(image, resize)[None], spec.normalization)
        if not isinstance(image, (str, os.PathLike)):
            raise _not_an_image(image)
        return load_image(image, spec.channels, spec.image_size, spec.normalization, resize=resize)[None]

    def _tensor(self, images: Tensor) -> Tensor:
        """``(B, C, H, W)`` from ``([B,] C, H, W)``: uint8 pixels normalised, a float input as it is."""
        expected = (self.spec.channels, *self.spec.image_size)
        if images.dim() not in (3, 4) or tuple(images.shape[-3:]) != expected:
            raise ValueError(
                f"image tensors must be (C, H, W) or (B, C, H, W) with (C, H, W) = {expected}, "
                f"got shape {tuple(images.shape)}"
            )
        images = images if images.dim() == 4 else images[None]
        return preprocess_batch(images, self.spec.normalization) if images.dtype == torch.uint8 else images.float()

    def _pixels(self, image: Image.Image, resize: bool) -> Tensor:
        """uint8 ``(C, H, W)``: a Pillow image in the spec's channel mode and size."""
        channels, (height, width) = self.spec.channels, self.spec.image_size
        if image.size != (width, height) and not resize:
            raise ImageInputError(
                f"a {image.size[0]}x{image.size[1]} (WxH) image, but the model expects (C, H, W) = "
                f"({channels}, {height}, {width}), and resizing is off"
            )
        converted = image.convert(_MODES[channels])
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.BILINEAR)
        pixels = torch.from_numpy(np.array(converted, dtype=np.uint8))  # (H, W) or (H, W, C)
        return pixels.reshape(height, width, channels).permute(2, 0, 1)  # (C, H, W)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_to(self.precision, self.device)


def _not_an_image(value: object) -> TypeError:
    """The error for a value that ``classify`` cannot read as images, naming its type."""
    return TypeError(
        f"images must be a path, a Pillow image or a tensor, or a sequence of them, got {type(value).__name__}"
    )
