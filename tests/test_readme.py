"""The README's code runs as written and means what it says."""

import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README should show the core in code"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
        assert namespace["w"].shape == (2, 8, 10, 10)  # per-head weights (B, H, L, L)
        assert namespace["out"].shape == (2, 10, 512)


def test_readme_gives_the_two_setup_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
