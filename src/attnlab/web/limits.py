"""What a request may hold, the ASGI middleware that caps the body, and the image decoder.

Bodies over ``max_body_bytes`` are refused with 413 before the app reads them; images are read in
memory (never written to disk) and refused when not an image (415), truncated (422) or larger than
``max_image_pixels`` (413).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

__all__ = ["ApiError", "BodyLimit", "Limits", "decode_image"]


@dataclass(frozen=True)
class Limits:
    """The server's limits.

    Attributes:
        max_body_bytes: the largest request body.
        max_image_pixels: the largest image, width x height.
        max_text_chars: the longest text to translate or encode.
        max_beam: the largest beam size.
        max_waiting: requests queued for one model, the one running included (503 beyond).
    """

    max_body_bytes: int = 8 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 1000
    max_beam: int = 8
    max_waiting: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {value}")


class ApiError(Exception):
    """An error the client can fix: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` (declared, or as it streams in) gets a JSON 413."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send, size: int) -> None:
        message = f"the request body ({size} bytes or more) is over the limit of {self.max_bytes} bytes: send less"
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """The image in ``data``, fully decoded in memory; ``ApiError`` 415 (not an image), 413 (over
    ``max_pixels``) or 422 (truncated or corrupt)."""
    if not data:
        raise ApiError(422, "the body is empty: send the image file's bytes as the request body")
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(415, "the body is not an image Pillow can read: send a PNG, JPEG, GIF or WebP file") from None
    except Image.DecompressionBombError as error:
        raise ApiError(413, f"the image is too large ({error}): at most {max_pixels} pixels") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, f"the image is {width}x{height} ({width * height} pixels), over the limit of {max_pixels}")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(422, f"the {image.format} image cannot be decoded ({error}): is the file truncated?") from None
    return image
