"""The viewer's JSON API through FastAPI's TestClient: every endpoint against the inference API and
the papers' formulas, and every bad input of issue 15 with its status and message."""

from __future__ import annotations

import argparse
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from attnlab.cli import serve
from attnlab.web import Limits, create_app
from attnlab.web.payload import decode_weights, encode_weights

TEXT = "March 15, 2024"


@pytest.fixture(scope="module")
def client(served_models) -> TestClient:
    return TestClient(create_app(served_models))


@pytest.fixture(scope="module")
def png(seven_png) -> bytes:
    return seven_png


def _close(payload: dict, reference: torch.Tensor) -> None:
    """8-bit weights are within half a quantisation step of the reference."""
    decoded = decode_weights(payload)
    assert list(decoded.shape) == list(reference.shape)
    torch.testing.assert_close(decoded, reference.float(), atol=payload["scale"] / 2 + 1e-6, rtol=0)


def _error(response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "Traceback" not in message
    for word in words:
        assert word in message, message


# --- what each endpoint returns -----------------------------------------------------------------------
def test_models_lists_tasks_layers_and_heads(client):
    models = {m["name"]: m for m in client.get("/api/models").json()["models"]}
    assert models["en_ja"]["task"] == "translation"
    assert models["en_ja"]["layers"] == {"encoder_self": 2, "decoder_self": 2, "cross": 2}
    assert models["digits_vit"] == {
        "name": "digits_vit",
        "task": "classification",
        "layers": {"vit": 2},
        "heads": 2,
        "classes": [str(i) for i in range(10)],
        "image_size": [8, 8],
    }


def test_page_and_its_files_are_served_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("viewer.js", "viewer.css"):
        assert f"/static/{name}" in page.text
        assert client.get(f"/static/{name}").status_code == 200
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no CDN


def test_openapi_documents_every_endpoint(client):
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/api/models", "/api/models/{name}/translate", "/api/models/{name}/classify"} <= set(paths)
    assert "/api/models/{name}/encode" in paths


@pytest.mark.parametrize("beam", [1, 3])
def test_translate_returns_the_translators_translation_and_maps(client, served_models, beam):
    body = client.post("/api/models/en_ja/translate", json={"text": TEXT, "beam": beam}).json()
    expected = served_models["en_ja"].runner.translate(TEXT, beam=beam, attention=True)
    assert body["translation"] == expected.translation
    assert body["labels"]["source"] == expected.source_pieces
    assert body["labels"]["target"] == expected.target_pieces
    assert [(m["kind"], m["layer"]) for m in body["maps"]] == [(m.kind, m.layer) for m in expected.attention]
    for payload, m in zip(body["maps"], expected.attention):
        _close(payload, m.weights[0])


def test_translate_returns_only_the_layers_heads_and_kinds_asked(client, served_models):
    asked = {"text": TEXT, "layers": [-1], "heads": [1], "kinds": ["cross"]}
    body = client.post("/api/models/en_ja/translate", json=asked).json()
    expected = served_models["en_ja"].runner.translate(TEXT, attention=True)
    assert [(m["kind"], m["layer"], m["heads"]) for m in body["maps"]] == [("cross", 1, [1])]
    _close(body["maps"][0], expected.attention["cross", 1][0, 1:2])


def test_classify_returns_top_k_maps_and_the_papers_rollout(client, served_models, png):
    response = client.post(
        "/api/models/digits_vit/classify?top_k=2", content=png, headers={"content-type": "image/png"}
    )
    body = response.json()
    expected = served_models["digits_vit"].runner.classify(Image.open(io.BytesIO(png)), top_k=2, attention=True)
    assert [label for label, _ in body["top"]] == [label for label, _ in expected.top]
    assert body["grid"] == [4, 4] and body["prefix_tokens"] == 1
    layers = [expected.attention["vit", i][0].double() for i in range(2)]  # (H, N, N)
    for payload, weights in zip(body["maps"], layers):
        _close(payload, weights)
    # Abnar & Zuidema 2020: A = 0.5 W + 0.5 I per layer (W the head mean), rolled A(2) A(1); the class row.
    eye = torch.eye(layers[0].shape[-1], dtype=torch.float64)
    step = [0.5 * w.mean(0) + 0.5 * eye for w in layers]
    _close(body["rollout"]["fused"], (step[1] @ step[0])[0, 1:].reshape(4, 4))
    alone = [[0.5 * w[h] + 0.5 * eye for w in layers] for h in range(2)]
    _close(body["rollout"]["heads"], torch.stack([(a[1] @ a[0])[0, 1:].reshape(4, 4) for a in alone]))


def test_classify_keeps_the_layers_and_heads_asked(client, png):
    url = "/api/models/digits_vit/classify?layers=1&heads=0"
    body = client.post(url, content=png, headers={"content-type": "image/png"}).json()
    assert [(m["layer"], m["heads"], m["shape"]) for m in body["maps"]] == [(1, [0], [1, 17, 17])]


def test_classify_with_a_cnn_returns_its_spatial_masks(client, served_models, png):
    body = client.post("/api/models/digits_cnn/classify", content=png, headers={"content-type": "image/png"}).json()
    expected = served_models["digits_cnn"].runner.classify(Image.open(io.BytesIO(png)), attention=True)
    assert [label for label, _ in body["top"]] == [label for label, _ in expected.top]
    assert body["grid"] is None and body["rollout"] is None
    assert [(m["kind"], m["layer"], m["heads"]) for m in body["maps"]] == [
        ("spatial_mask", 0, None),
        ("spatial_mask", 1, None),
    ]
    for payload, m in zip(body["maps"], expected.attention):
        _close(payload, m.weights[0])  # (1, h, w)


def test_encode_minilm_matches_huggingface_eager_attentions():
    transformers = pytest.importorskip("transformers", reason="the [hf] extra: pip install 'attnlab[hf]'")
    from attnlab.web import load_models

    served = load_models([], ["minilm"])
    body = TestClient(create_app(served)).post("/api/models/minilm/encode", json={"text": "日本語の文です。"}).json()
    encoder = served["minilm"].runner
    eager = transformers.AutoModel.from_pretrained(encoder.model.name_or_path, attn_implementation="eager").eval()
    inputs = encoder.tokenizer(["日本語の文です。"], return_tensors="pt")
    with torch.no_grad():
        reference = eager(**inputs, output_attentions=True).attentions
    assert body["labels"]["tokens"] == encoder.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
    assert len(body["maps"]) == len(reference) == 6
    for payload, weights in zip(body["maps"], reference):
        _close(payload, weights[0])


def test_concurrent_requests_never_mix_results(client, png):
    def translate(text):
        return client.post("/api/models/en_ja/translate", json={"text": text}).json()

    def classify(_):
        return client.post("/api/models/digits_vit/classify", content=png, headers={"content-type": "image/png"}).json()

    texts = [TEXT, "forty-two", "May 1, 2020", "seven"] * 3
    alone = {text: translate(text) for text in set(texts)}
    single = classify(0)
    with ThreadPoolExecutor(8) as pool:
        mixed = list(pool.map(lambda i: translate(texts[i]) if i % 2 else classify(i), range(len(texts))))
    for i, body in enumerate(mixed):
        assert body == (alone[texts[i]] if i % 2 else single)


def test_weights_round_trip_within_half_a_step():
    weights = torch.softmax(torch.randn(3, 5, 7, dtype=torch.float64), dim=-1)
    payload = encode_weights(weights)
    assert len(payload["data"]) < weights.numel() * 2  # 8 bits (base64: 4/3 byte) per weight
    _close(payload, weights)


# --- bad input: status and a message a person can act on; the server stays up ------------------------
def test_oversized_bodies_are_refused_with_413(served_models, png):
    small = TestClient(create_app(served_models, Limits(max_body_bytes=64)))
    _error(small.post("/api/models/en_ja/translate", json={"text": "x" * 100}), 413, "over the limit of 64 bytes")
    streamed = small.post(
        "/api/models/digits_vit/classify", content=iter([png[:50], png[50:]]), headers={"content-type": "image/png"}
    )
    _error(streamed, 413, "64 bytes")
    assert small.get("/api/models").status_code == 200


def test_images_over_the_pixel_limit_are_refused_with_413(served_models, png):
    small = TestClient(create_app(served_models, Limits(max_image_pixels=100)))
    response = small.post("/api/models/digits_vit/classify", content=png, headers={"content-type": "image/png"})
    _error(response, 413, "32x32", "limit of 100")


@pytest.mark.parametrize(
    ("content", "kind", "status", "words"),
    [
        (b"just some text, not pixels", "image/png", 415, ["not an image"]),
        (b"a,b\n1,2\n", "text/csv", 415, ["'text/csv'", "not an image"]),
        (b"", "image/png", 422, ["empty"]),
        ("truncated", "image/png", 422, ["truncated"]),
    ],
)
def test_non_images_and_truncated_images_are_refused(client, png, content, kind, status, words):
    body = png[: len(png) // 2] if content == "truncated" else content
    _error(client.post("/api/models/digits_vit/classify", content=body, headers={"content-type": kind}), status, *words)
    assert client.get("/api/models").status_code == 200


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/api/models/nope/translate", ["unknown model 'nope'", "en_ja"]),
        ("/api/models/digits_vit/translate", ["classification model", "/api/models/digits_vit/classify"]),
        ("/api/nothing", ["no such page"]),
    ],
)
def test_unknown_models_and_paths_are_404(client, path, words):
    _error(client.post(path, json={"text": TEXT}), 404, *words)


@pytest.mark.parametrize(
    ("asked", "words"),
    [
        ({"layers": [2]}, ["layer 2 does not exist", "0..1"]),
        ({"layers": [-3]}, ["layer -3"]),
        ({"heads": [5]}, ["head 5 does not exist", "2 heads"]),
        ({"kinds": ["vit"]}, ["kind 'vit'", "cross"]),
        ({"text": ""}, ["text is empty"]),
        ({"text": "  \n "}, ["text is empty"]),
        ({"text": "長" * 1001}, ["1001 characters", "limit of 1000"]),
        ({"beam": 0}, ["beam", "greater than or equal to 1"]),
        ({"beam": 9}, ["beam 9", "limit of 8"]),
        ({"text": 5}, ["text", "string"]),
        ({"colour": "red"}, ["colour", "Extra inputs"]),
    ],
)
def test_bad_translate_requests_are_422_naming_the_value(client, asked, words):
    _error(client.post("/api/models/en_ja/translate", json={"text": TEXT, **asked}), 422, *words)


def test_malformed_and_missing_json_is_422(client):
    headers = {"content-type": "application/json"}
    _error(client.post("/api/models/en_ja/translate", content=b'{"text": "a', headers=headers), 422, "not valid JSON")
    _error(client.post("/api/models/en_ja/translate", json={"beam": 2}), 422, "text", "Field required")
    _error(client.post("/api/models/en_ja/translate", content=b"", headers=headers), 422, "Field required")


@pytest.mark.parametrize(
    ("query", "words"), [("layers=7", ["layer 7", "0..1"]), ("heads=2", ["head 2"]), ("top_k=0", ["top_k"])]
)
def test_bad_classify_queries_are_422(client, png, query, words):
    response = client.post(
        f"/api/models/digits_vit/classify?{query}", content=png, headers={"content-type": "image/png"}
    )
    _error(response, 422, *words)


def test_a_model_with_a_full_queue_answers_503_and_others_still_answer(served_models, png, monkeypatch):
    inside, release = threading.Event(), threading.Event()
    translate = served_models["en_ja"].runner.translate

    def slow(*args, **kwargs):
        inside.set()
        release.wait(30)
        return translate(*args, **kwargs)

    monkeypatch.setattr(served_models["en_ja"].runner, "translate", slow)
    client = TestClient(create_app(served_models, Limits(max_waiting=1)))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, "/api/models/en_ja/translate", json={"text": TEXT})
        assert inside.wait(30)
        _error(client.post("/api/models/en_ja/translate", json={"text": TEXT}), 503, "'en_ja'", "retry")
        image = client.post("/api/models/digits_vit/classify", content=png, headers={"content-type": "image/png"})
        assert image.status_code == 200  # another model is not held up
        release.set()
        assert first.result(30).status_code == 200


def test_a_failing_model_answers_500_without_a_traceback(served_models, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(served_models["en_ja"].runner, "translate", broken)
    client = TestClient(create_app(served_models), raise_server_exceptions=False)
    response = client.post("/api/models/en_ja/translate", json={"text": TEXT})
    _error(response, 500, "RuntimeError", "server log")
    assert "secret" not in response.text
    assert client.get("/api/models").status_code == 200


# --- attnlab serve ------------------------------------------------------------------------------------
def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="attnlab")
    serve.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_serve_binds_localhost_by_default_after_loading(web_runs, monkeypatch):
    calls = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: calls.append((app, options)))
    args = _parse(["serve", str(web_runs["en_ja"]), str(web_runs["digits_vit"])])
    assert args.func(args) == 0
    ((app, options),) = calls
    assert options["host"] == "127.0.0.1" and options["port"] == 8000
    assert sorted(app.state.models) == ["digits_vit", "en_ja"]


@pytest.mark.parametrize("bad", ["missing", "file", "empty_dir"])
def test_serve_a_run_that_fails_to_load_is_one_line_and_exit_2_before_binding(
    web_runs, tmp_path, monkeypatch, capsys, bad
):
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("bound a port"))
    path = tmp_path / bad
    if bad == "file":
        path.write_text("not a run")
    elif bad == "empty_dir":
        path.mkdir()
    args = _parse(["serve", str(web_runs["en_ja"]), str(path), "--port", "8123"])
    assert serve.run(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("attnlab serve: error:")
    assert str(path.name) in err or "run" in err


def test_serve_without_models_is_a_usage_error(capsys):
    assert serve.run(_parse(["serve"])) == 2
    assert "RUN_DIR" in capsys.readouterr().err
