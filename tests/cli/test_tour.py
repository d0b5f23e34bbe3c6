"""attnlab tour: each step prints its command, writes its run and figures, and the index links them."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from PIL import Image

from attnlab.cli.main import main
from attnlab.cli.tour import STEPS


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links.append(dict(attrs)["href"])


def test_a_tour_step_trains_draws_and_is_linked(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["tour", "--out", str(out), "--only", "digits_cnn"]) == 0
    printed = capsys.readouterr().out
    commands = re.findall(r"^\$ attnlab (\w+)", printed, flags=re.M)
    assert commands == ["train", "visualize"]
    assert (out / "digits_cnn" / "checkpoints" / "best").is_dir()
    image = Image.open(out / "digit.png")
    assert image.size == (8, 8) and image.mode == "L"
    figures = out / "digits_cnn" / "figures"
    assert {p.name for p in figures.glob("*.png")} and (figures / "index.html").is_file()
    parser = _Links()
    parser.feed((out / "index.html").read_text(encoding="utf-8"))
    assert parser.links == ["digits_cnn/figures/index.html"]
    assert printed.strip().endswith(str((out / "index.html").resolve()))


def test_the_default_tour_leaves_out_the_steps_that_download():
    extra = [s.name for s in STEPS if s.extra]
    assert extra == ["fashion_vit"]
    assert {"minilm", "translation", "japanese", "digits_vit", "digits_cnn"} == {s.name for s in STEPS if not s.extra}
