"""The attention viewer in the browser: ``attnlab serve`` (FastAPI app, JSON API and one static page).

``create_app(models)`` builds the app over models loaded once (``load_models``); the page lives in
``static/`` as plain HTML, CSS and JavaScript (no build step, no CDN). FastAPI is imported only when
one of these names is first used, so ``attnlab serve --help`` works without the ``[web]`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Limits", "ServedModel", "create_app", "load_models"]

_HOMES = {
    "Limits": "attnlab.web.limits",
    "ServedModel": "attnlab.web.registry",
    "create_app": "attnlab.web.app",
    "load_models": "attnlab.web.registry",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'attnlab.web' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
