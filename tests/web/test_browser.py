"""The viewer end to end: uvicorn on a free local port, the page driven in headless Chromium
(Debian's ``chromium`` through Playwright's Python package; no browser download)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from attnlab.web import create_app, load_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Draw each character with the page's font; missing glyphs all draw as the same empty box.
DISTINCT_GLYPHS = """(chars) => {
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = 48;
  const ctx = canvas.getContext("2d");
  ctx.font = getComputedStyle(document.getElementById("output")).fontFamily.replace(/^/, "40px ");
  const drawn = chars.map((c) => { ctx.clearRect(0, 0, 48, 48); ctx.fillText(c, 2, 42); return canvas.toDataURL(); });
  return new Set(drawn).size === chars.length;
}"""
README_IMAGE = Path(__file__).resolve().parents[2] / "docs" / "images" / "viewer.png"


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright"
    return None if Path(CHROMIUM).exists() else "chromium"


if _missing():
    pytest.skip(
        f"browser test needs {_missing()}: apt-get install -y chromium fonts-noto-cjk && pip install playwright "
        "(never `playwright install`); `make test` installs both",
        allow_module_level=True,
    )

from playwright.sync_api import sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def server_url(served_models):
    """The app served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    models = {**served_models, **load_models([], ["minilm"])}
    server = uvicorn.Server(uvicorn.Config(create_app(models), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def viewer(server_url):
    """The viewer page in headless Chromium; no JavaScript error may occur on it."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server_url)
        page.wait_for_selector("#model option", state="attached")
        yield page
        browser.close()
        assert not errors, errors


def _pixels(viewer, canvas: str) -> str:
    return viewer.evaluate(f"document.querySelector('{canvas}').toDataURL()")


def _ready(viewer) -> None:
    viewer.wait_for_function("document.getElementById('status').textContent === 'ready'")


def _select(viewer, selector: str, value: str) -> None:
    viewer.select_option(selector, value)


def _upload(page, png: bytes, folder: Path, model: str = "digits_vit") -> None:
    """Pick the image ``model`` and upload ``png`` through the file input; wait for the drawing."""
    _select(page, "#model", model)
    image = folder / "seven.png"
    image.write_bytes(png)
    page.set_input_files("#image-file", str(image))
    _ready(page)


def test_translate_then_switch_layer_and_head_redraws(viewer, served_models, artefacts):
    _select(viewer, "#model", "en_ja")
    viewer.fill("#text", "March 15, 2024")
    viewer.fill("#beam", "2")
    viewer.click("#run-text")
    _ready(viewer)
    _select(viewer, "#kind", "encoder_self")
    heat, lines = _pixels(viewer, "#heatmap"), viewer.inner_html("#headview")
    assert viewer.locator("#headview line").count() > 0
    pieces = served_models["en_ja"].runner.translate("March 15, 2024", attention=True).source_pieces
    assert viewer.locator("#headview text").all_text_contents()[: len(pieces)] == pieces

    _select(viewer, "#layer", "1")
    assert _pixels(viewer, "#heatmap") != heat and viewer.inner_html("#headview") != lines
    heat, lines = _pixels(viewer, "#heatmap"), viewer.inner_html("#headview")
    _select(viewer, "#head", "1")
    assert _pixels(viewer, "#heatmap") != heat and viewer.inner_html("#headview") != lines
    heat = _pixels(viewer, "#heatmap")
    _select(viewer, "#kind", "cross")
    assert _pixels(viewer, "#heatmap") != heat
    viewer.screenshot(path=artefacts / "viewer_text.png", full_page=True)


def test_japanese_output_wraps_inside_its_box(viewer):
    show = "(t) => { const o = document.getElementById('output'); o.textContent = t; o.lang = 'ja'; }"
    viewer.evaluate(show, "東")
    one_line = viewer.locator("#output").bounding_box()
    viewer.evaluate(show, "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。" * 4)
    box = viewer.locator("#output").bounding_box()
    assert box["height"] > 2.5 * one_line["height"]  # wrapped between characters, with no spaces to break at
    assert box["width"] == one_line["width"] and viewer.evaluate("document.documentElement.scrollWidth") <= 1280


def test_japanese_sentence_encoded_by_minilm_shows_its_characters(viewer):
    _select(viewer, "#model", "minilm")
    viewer.fill("#text", "東京は日本の首都です。")
    viewer.click("#run-text")
    _ready(viewer)
    labels = viewer.locator("#headview text").all_text_contents()
    assert "東" in labels and "京" in labels  # BERT splits CJK text into characters
    assert viewer.evaluate(DISTINCT_GLYPHS, ["東", "京", "首"])  # real glyphs: missing ones all draw one box
    heat = _pixels(viewer, "#heatmap")
    _select(viewer, "#layer", "5")
    assert _pixels(viewer, "#heatmap") != heat


def test_upload_image_click_patch_and_rollout_redraw(viewer, seven_png, tmp_path, artefacts):
    _upload(viewer, seven_png, tmp_path)
    assert viewer.locator("#prediction li").count() == 3
    cls_map = _pixels(viewer, "#image-canvas")

    box = viewer.locator("#image-canvas").bounding_box()
    viewer.mouse.click(box["x"] + box["width"] * 0.9, box["y"] + box["height"] * 0.9)  # patch (3, 3)
    assert viewer.input_value("#overlay") == "query"
    query_map = _pixels(viewer, "#image-canvas")
    assert query_map != cls_map
    viewer.mouse.click(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.1)  # patch (0, 0)
    assert _pixels(viewer, "#image-canvas") != query_map

    _select(viewer, "#overlay", "rollout")
    fused = _pixels(viewer, "#image-canvas")
    _select(viewer, "#head", "0")
    assert _pixels(viewer, "#image-canvas") != fused
    viewer.screenshot(path=artefacts / "viewer_image.png", full_page=True)


def test_cnn_spatial_mask_overlay_follows_the_block(viewer, seven_png, tmp_path):
    _upload(viewer, seven_png, tmp_path, "digits_cnn")
    assert viewer.locator("#prediction li").count() == 3 and viewer.is_hidden("#overlay")
    first = _pixels(viewer, "#image-canvas")
    _select(viewer, "#layer", "1")
    assert _pixels(viewer, "#image-canvas") != first


def test_readme_screenshot(viewer, seven_png, tmp_path, artefacts):
    _upload(viewer, seven_png, tmp_path)
    _select(viewer, "#head", "mean")
    _select(viewer, "#overlay", "cls")
    shot = artefacts / "viewer.png"
    viewer.screenshot(path=shot, full_page=True)
    README_IMAGE.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, README_IMAGE)
    assert shot.stat().st_size > 10_000


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    """Where the screenshots are kept (pytest's basetemp: the last runs' are kept)."""
    return tmp_path_factory.mktemp("viewer_screenshots")
