"""The attention viewer in the browser: ``attnlab serve`` (FastAPI app, JSON API and one static page).

``create_app(models)`` builds the app over models loaded once (``load_models``); the page lives in
``static/`` as plain HTML, CSS and JavaScript (no build step, no CDN).
"""

from attnlab.web.app import create_app
from attnlab.web.limits import Limits
from attnlab.web.registry import ServedModel, load_models

__all__ = ["Limits", "ServedModel", "create_app", "load_models"]
