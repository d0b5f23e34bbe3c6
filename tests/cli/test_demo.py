"""`attnlab demo`: the tour prints real attention tables that agree with Hugging Face."""

import re

from attnlab.cli.main import main


def test_demo_prints_tables_that_match_huggingface(capsys):
    assert main(["demo", "--text", "The cat sat on the mat because it was tired.", "--layer", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer 1, mean over the 12 heads" in out
    rows = [line for line in out.splitlines() if line.startswith("cat ")]
    weights = [float(w.rstrip("*")) for w in rows[0].split()[1:]]
    assert len(weights) == 13 and abs(sum(weights) - 1) < 0.05  # 13 tokens with [CLS]/[SEP], a row of A
    gap = float(re.search(r"all layers and heads: (\S+)", out).group(1))
    assert gap < 1e-4
    assert "scaled dot, sparsemax" in out


def test_demo_rejects_a_layer_out_of_range(capsys):
    assert main(["demo", "--layer", "9"]) == 2
    assert "--layer must be in 0..5, got 9" in capsys.readouterr().err
