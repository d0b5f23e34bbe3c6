"""``create_app(models)``: the FastAPI app of ``attnlab serve``.

Routes (their OpenAPI schema at ``/openapi.json``; no Swagger page, which would load from a CDN)::

    GET  /                                 the viewer page (static/index.html)
    GET  /api/models                       the models served, their task, layers and heads
    POST /api/models/{name}/translate      {"text", "beam", "layers", "heads", "kinds"} -> translation + maps
    POST /api/models/{name}/encode         {"text", "layers", "heads"} -> tokens + maps (BERT encoders)
    POST /api/models/{name}/classify       image bytes as the body; ?layers=&heads=&top_k= -> top-k + maps

Inference runs off the event loop, in one thread per model (so a slow model never holds up another),
one request per model at a time, with at most ``Limits.max_waiting`` requests queued per model (503 beyond).
Errors are JSON ``{"error": message}`` with a 4xx status; nothing answers with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnlab.viz.capture import CaptureSpec
from attnlab.viz.maps import check_choice
from attnlab.web.limits import ApiError, BodyLimit, Limits, decode_image
from attnlab.web.payload import map_payload, rollout_payload
from attnlab.web.registry import ServedModel

__all__ = ["STATIC", "EncodeRequest", "TranslateRequest", "create_app"]

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


class EncodeRequest(BaseModel):
    """A sentence to encode, and the layers and heads whose maps to return (None: all)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="the sentence")
    layers: list[int] | None = Field(None, description="layer indices, negative from the last; null: all")
    heads: list[int] | None = Field(None, description="head indices, negative from the last; null: all")


class TranslateRequest(EncodeRequest):
    """A sentence to translate, the beam size, and the maps to return."""

    beam: int = Field(1, ge=1, description="beam size (1: greedy search)")
    kinds: list[str] | None = Field(None, description="encoder_self, decoder_self, cross, rnn_source; null: all")


def create_app(models: Mapping[str, ServedModel], limits: Limits | None = None) -> FastAPI:
    """The viewer's app over ``models`` (from ``load_models``), loaded once and shared by all requests.

    Args:
        models: the models by name.
        limits: body, image, text, beam and queue limits (defaults: ``Limits()``).
    """
    limits = limits or Limits()
    app = FastAPI(
        title="attnlab viewer",
        description="Attention maps of translation, image and encoder models.",
        docs_url=None,  # Swagger UI and ReDoc load their scripts from a CDN; the viewer works offline
        redoc_url=None,
    )
    app.state.models, app.state.limits = dict(models), limits
    app.state.pools = {name: ThreadPoolExecutor(1, thread_name_prefix=f"attnlab-{name}") for name in models}
    app.state.queues = {name: threading.BoundedSemaphore(limits.max_waiting) for name in models}
    _add_error_handlers(app)
    _add_routes(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/models", summary="The models served")
    async def list_models() -> dict:
        return {"models": [m.describe() for m in app.state.models.values()], "limits": vars(app.state.limits)}

    @app.post("/api/models/{name}/translate", summary="Translate a sentence; its attention maps")
    async def translate(name: str, body: TranslateRequest) -> dict:
        served = _model(app, name, "translation")
        limits = app.state.limits
        _check_text(body.text, limits)
        if body.beam > limits.max_beam:
            raise ApiError(422, f"beam {body.beam} is over the limit of {limits.max_beam}")
        spec = _spec(served, body.layers, body.heads, body.kinds)
        return await _infer(app, served, _translate, served, body, spec)

    @app.post("/api/models/{name}/encode", summary="Encode a sentence; its self-attention maps")
    async def encode(name: str, body: EncodeRequest) -> dict:
        served = _model(app, name, "encoding")
        _check_text(body.text, app.state.limits)
        spec = _spec(served, body.layers, body.heads, None)
        return await _infer(app, served, _encode, served, body.text, spec)

    @app.post(
        "/api/models/{name}/classify",
        summary="Classify the image sent as the body; its attention maps and rollout",
        openapi_extra={"requestBody": {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def classify(
        name: str,
        request: Request,
        layers: Annotated[list[int] | None, Query()] = None,
        heads: Annotated[list[int] | None, Query()] = None,
        top_k: Annotated[int, Query(ge=1)] = 3,
    ) -> dict:
        served = _model(app, name, "classification")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not kind.startswith("image/") and kind != "application/octet-stream":
            raise ApiError(415, f"Content-Type {kind!r} is not an image: send the file as image/png, image/jpeg...")
        spec = _spec(served, layers, heads, None)
        data = await request.body()
        return await _infer(app, served, _classify, served, data, spec, top_k, app.state.limits.max_image_pixels)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(error.errors())}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        missing = f"no such page {request.url.path}: the API is described at /openapi.json"
        message = missing if error.status_code == 404 else error.detail
        return JSONResponse({"error": str(message)}, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("request %s %s failed", request.method, request.url.path)
        message = f"the server failed on this input ({type(error).__name__}); the server log has the details"
        return JSONResponse({"error": message}, status_code=500)


def _validation_message(errors: list[dict]) -> str:
    """One line naming each invalid field and why."""
    parts = []
    for error in errors:
        if error.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({error.get('ctx', {}).get('error', error['msg'])})")
            continue
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def _model(app: FastAPI, name: str, task: str) -> ServedModel:
    """The served model ``name`` of ``task``, else a 404 naming what exists."""
    models = app.state.models
    served = models.get(name)
    if served is None:
        raise ApiError(404, f"unknown model {name!r}: this server has {sorted(models)}")
    if served.task != task:
        verb = {"translation": "translate", "classification": "classify", "encoding": "encode"}[served.task]
        raise ApiError(404, f"model {name!r} is a {served.task} model: POST /api/models/{name}/{verb}")
    return served


def _check_text(text: str, limits: Limits) -> None:
    """422 for blank text or text over ``max_text_chars``."""
    if not text.strip():
        raise ApiError(422, "text is empty: type a sentence")
    if len(text) > limits.max_text_chars:
        raise ApiError(422, f"text is {len(text)} characters, over the limit of {limits.max_text_chars}: send less")


def _spec(
    served: ServedModel, layers: list[int] | None, heads: list[int] | None, kinds: list[str] | None
) -> CaptureSpec:
    """The capture asked for, checked against the model (422 naming what exists)."""
    present = list(served.layers)
    for kind in kinds or ():
        if kind not in present:
            raise ApiError(422, f"kind {kind!r} is not one of model {served.name!r}'s kinds {present}")
    wanted = kinds or present
    try:
        for kind in wanted:
            check_choice("layer", layers, served.layers[kind], f"{kind} layers")
        if served.heads:
            check_choice("head", heads, served.heads, "heads")
    except ValueError as error:
        raise ApiError(422, str(error)) from None
    return CaptureSpec(layers=layers, heads=heads if served.heads else None, kinds=kinds)


async def _infer(app: FastAPI, served: ServedModel, work: Callable[..., dict], *args: Any) -> dict:
    """``work(*args)`` in ``served``'s thread, holding its lock (apps may share a model); 503 when
    ``max_waiting`` requests already wait for it."""
    queue = app.state.queues[served.name]
    if not queue.acquire(blocking=False):
        waiting = app.state.limits.max_waiting
        raise ApiError(503, f"model {served.name!r} has {waiting} requests waiting, the limit: retry in a moment")

    def locked() -> dict:
        with served.lock:
            return work(*args)

    try:
        return await asyncio.get_running_loop().run_in_executor(app.state.pools[served.name], locked)
    finally:
        queue.release()


def _translate(served: ServedModel, body: TranslateRequest, spec: CaptureSpec) -> dict:
    """The translation of ``body.text``, its pieces and its maps (8-bit)."""
    result = served.runner.translate(body.text, beam=body.beam, attention=spec)
    labels = {axis: rows[0] for axis, rows in result.attention.labels.items()}
    maps = [map_payload(m) for m in result.attention]
    return {
        "model": served.name,
        "source": result.source,
        "translation": result.translation,
        "labels": labels,
        "maps": maps,
    }


def _encode(served: ServedModel, text: str, spec: CaptureSpec) -> dict:
    """The tokens of ``text`` and the encoder's self-attention maps (8-bit)."""
    encoded = served.runner.encode(text, layers=spec.layers, heads=spec.heads)
    return {
        "model": served.name,
        "labels": {"tokens": encoded.tokens},
        "maps": [map_payload(m) for m in encoded.attention],
    }


def _classify(served: ServedModel, data: bytes, spec: CaptureSpec, top_k: int, max_pixels: int) -> dict:
    """The top-k classes of the image in ``data``, the maps asked (8-bit) and a ViT's rollout."""
    image = decode_image(data, max_pixels)
    result = served.runner.classify(image, top_k=top_k, attention=True)  # all layers: rollout needs them
    maps = result.attention
    count = max(served.layers.values())
    layers = None if spec.layers is None else {i % count for i in spec.layers}
    heads = None if spec.heads is None else [h % served.heads for h in spec.heads]
    chosen = [m for m in maps if layers is None or m.layer in layers]
    return {
        "model": served.name,
        "top": [[label, p] for label, p in result.top],
        "image": {"width": image.width, "height": image.height},
        "grid": list(maps.grid) if maps.grid else None,
        "prefix_tokens": maps.prefix_tokens,
        "maps": [map_payload(m, heads) for m in chosen],
        "rollout": rollout_payload(maps),
    }
