"""The site's experiments: each claim checked on a quick run, against formulas we did not write."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from attnlab import experiments
from attnlab.cli.main import main
from attnlab.experiments import clutter, japanese, long_inputs, pages, scaling, soft_lookup, word_order

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "docs" / "site"
OURS = ("soft_lookup", "word_order", "scaling", "long_inputs", "clutter", "japanese")


def _figures_written(out: Path, module) -> None:
    assert sorted(p.name for p in out.glob("*.png")) == sorted(module.FIGURES)


def test_registry_lists_every_experiment_and_its_figures():
    names = experiments.names()
    assert set(OURS) <= set(names)
    declared = experiments.declared_figures()
    assert "figures/soft_lookup/blend.png" in declared
    assert "figures/japanese/alignment.png" in declared
    for name in OURS:
        module = experiments.get(name)
        assert name == module.NAME and module.FIGURES and all(f.endswith(".png") for f in module.FIGURES)


def test_unknown_experiment_names_the_known_ones(capsys):
    assert main(["experiment", "no_such_thing"]) == 2
    err = capsys.readouterr().err
    assert "no_such_thing" in err and all(name in err for name in OURS)
    with pytest.raises(experiments.UnknownExperimentError, match="soft_lookup"):
        experiments.get("nope")


def test_experiment_needs_a_name_or_all(capsys):
    assert main(["experiment"]) == 2
    assert "--all" in capsys.readouterr().err


def test_soft_lookup_blends_the_two_nearest_values(tmp_path):
    results = experiments.run_experiment("soft_lookup", tmp_path)
    north, east, south, west = results["midpoint_query"]["softmax"]
    keys, _ = soft_lookup.keys_and_values()
    q = soft_lookup.query_at(45.0)
    by_hand = torch.softmax((q @ keys.T) / math.sqrt(2), dim=-1)[0]  # Eq. 1 of Vaswani et al.
    assert [north, east, south, west] == pytest.approx(by_hand.tolist(), abs=1e-4)
    assert north == pytest.approx(east) and north + east > 0.97
    assert results["midpoint_query"]["sparsemax"] == [0.5, 0.5, 0.0, 0.0]
    assert results["midpoint_context"] == results["midpoint_query"]["softmax"]  # one-hot values: C = A
    near = results["near_query"]
    soft_max = [max(near[f"softmax_T{t:g}"]) for t in soft_lookup.TEMPERATURES]
    assert soft_max == sorted(soft_max, reverse=True)  # higher T, flatter
    assert all(0.0 in near[f"sparsemax_T{t:g}"] for t in soft_lookup.TEMPERATURES)  # exact zeros
    assert all(0.0 not in near[f"softmax_T{t:g}"] for t in (1, 2, 4))
    _figures_written(tmp_path, soft_lookup)
    assert json.loads((tmp_path / "results.json").read_text()) == results


def test_scaling_saturates_without_the_square_root_and_not_with_it(tmp_path):
    results = scaling.run(tmp_path, quick=True)
    dims = [str(d) for d in scaling.DIMS]
    unscaled, scaled = results["unscaled"], results["scaled"]
    for d in scaling.DIMS:  # Var(q·k) = d_k for unit-variance components (Vaswani et al., footnote 4)
        assert unscaled[str(d)]["score_std"] == pytest.approx(math.sqrt(d), rel=0.15)
        assert scaled[str(d)]["score_std"] == pytest.approx(1.0, rel=0.15)
    max_weight = [unscaled[d]["max_weight"] for d in dims]
    assert max_weight == sorted(max_weight) and max_weight[-1] > 0.9
    assert unscaled[dims[-1]]["grad_norm"] < 0.4 * unscaled[dims[0]]["grad_norm"]
    assert unscaled[dims[-1]]["entropy"] < 0.1 * results["uniform_entropy"]
    assert max(scaled[d]["max_weight"] for d in dims) - min(scaled[d]["max_weight"] for d in dims) < 0.05
    assert min(scaled[d]["entropy"] for d in dims) > 0.8 * results["uniform_entropy"]
    _figures_written(tmp_path, scaling)


def test_softmax_gradient_is_its_jacobian():
    m = scaling.measure(8, scaled=True, queries=4)
    assert m["grad_norm"] > 0
    s = torch.randn(5, dtype=torch.float64, requires_grad=True)
    a = torch.softmax(s, -1)
    g = torch.randn(5, dtype=torch.float64)
    (a * g).sum().backward()
    jacobian = torch.diag(a) - torch.outer(a, a)  # the reason saturation kills the gradient
    assert torch.allclose(s.grad, jacobian.detach() @ g)


def test_self_attention_is_permutation_equivariant_only_without_positions(tmp_path):
    results = word_order.run(tmp_path, quick=True)
    none = results["equivariance"]["none"]
    assert none["token_error"] < 1e-12 and none["pooled_error"] < 1e-12
    for kind in ("sinusoidal", "learned", "rotary"):
        broken = results["equivariance"][kind]
        assert broken["token_error"] > 1e-2 and broken["pooled_error"] > 1e-3, kind
    identity = list(range(len(word_order.SENTENCE)))  # the measure itself: a shuffle is seen by positions
    assert torch.equal(word_order.layer_outputs("none", identity), word_order.layer_outputs("none", identity))
    assert results["reversal"] == {}
    _figures_written(tmp_path, word_order)


def test_reversal_pairs_are_reversed_and_seeded():
    pairs = word_order.reversal_pairs(20, seed=3)
    assert pairs == word_order.reversal_pairs(20, seed=3)
    assert all(t == s[::-1] and word_order.LENGTHS[0] <= len(s) <= word_order.LENGTHS[1] for s, t in pairs)


def test_long_inputs_buckets_cover_every_length():
    assert long_inputs.tokenize_pair("March 15, 2024", "2024年3月15日") == (
        ["March", "1", "5", ",", "2", "0", "2", "4"],
        list("2024年3月15日"),
    )
    names = [long_inputs.bucket_name(*b) for b in long_inputs.BUCKETS]
    assert [long_inputs.bucket_of(n) for n in (1, 4, 5, 16, 24, 25, 90)] == [
        names[0],
        names[0],
        names[1],
        names[2],
        names[3],
        names[4],
        names[4],
    ]
    _, test = long_inputs.corpus(50, per_bucket=5)
    counts = {n: sum(long_inputs.bucket_of(len(s)) == n for s, _ in test) for n in names}
    assert all(c == 5 for c in counts.values())


def test_clutter_pastes_the_digit_inside_its_box():
    digits = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    images, boxes, index = clutter.clutter_images(digits, 2, seed=1)
    again, _, _ = clutter.clutter_images(digits, 2, seed=1)
    assert np.array_equal(images, again) and images.shape == (10, 1, 32, 32)
    big = np.kron(digits[:, 0].numpy(), np.ones((2, 2), dtype=np.uint8))
    for image, (top, left, bottom, right), source in zip(images, boxes, index):
        region = image[0, top:bottom, left:right]
        assert region.shape == (16, 16) and (region >= big[source]).all()


def test_japanese_grammar_flips_the_verb_and_holds_out_the_demos():
    ja, en = japanese.sentence_pair(
        japanese.SUBJECTS[0], japanese.ADJECTIVES[0], japanese.NOUNS[0], japanese.VERBS[0], japanese.TIMES[0]
    )
    assert " ".join(ja) == japanese.SELF_DEMO
    assert ja[-1] == "読んだ" and en[1] == "read"  # SOV vs SVO
    train, test = japanese.corpus()
    held = {" ".join(s) for s, _ in test}
    assert japanese.SELF_DEMO in held and not held & {" ".join(s) for s, _ in train}
    assert japanese.ALIGN_DEMO in {" ".join(t) for _, t in test}


@pytest.mark.slow
@pytest.mark.parametrize("module", [long_inputs, clutter, japanese])
def test_training_experiments_run_quick(tmp_path, module):
    results = experiments.run_experiment(module.NAME, tmp_path, quick=True)
    _figures_written(tmp_path, module)
    assert module.table(results, "en") and module.table(results, "ja")


def test_pages_quote_the_committed_results():
    """Every number block of the site's pages is what its experiment's results.json renders."""
    assert pages.stale_blocks(SITE, SITE / "figures") == []


def test_committed_figures_and_results_exist():
    for name in OURS:
        folder = SITE / "figures" / name
        assert (folder / "results.json").exists(), name
        for figure in experiments.get(name).FIGURES:
            size = (folder / figure).stat().st_size
            assert 0 < size < 400_000, (name, figure, size)


def test_update_pages_rewrites_only_result_blocks(tmp_path):
    experiments.run_experiment("soft_lookup", tmp_path / "figures" / "soft_lookup")
    page = tmp_path / "notation.ja.md"
    page.write_text("前\n<!-- results:soft_lookup -->\nold\n<!-- /results:soft_lookup -->\n後\n", encoding="utf-8")
    assert pages.stale_blocks(tmp_path, tmp_path / "figures") == ["notation.ja.md: soft_lookup"]
    assert pages.update_pages(tmp_path, tmp_path / "figures") == [page]
    text = page.read_text(encoding="utf-8")
    assert text.startswith("前\n") and text.endswith("後\n") and "| 正規化 | T |" in text and "old" not in text
    assert pages.stale_blocks(tmp_path, tmp_path / "figures") == []


def test_japanese_tables_name_the_top_words_and_escape_the_end_token():
    results = {
        "self_demo": "人気 の 小説",
        "focus_weights": [{"人気": 0.5, "の": 0.1, "小説": 0.4}],
        "align_most_attended": [["小説", "novel"], ["</s>", "a"]],
    }
    assert japanese.table(results, "ja").splitlines()[-1] == "| 0 | 0.50 | 0.10 | 0.40 | 人気、小説 |"
    assert japanese.table(results, "en").splitlines()[-1].endswith("| 人気, 小説 |")
    assert japanese.table(results, "en", "alignment").splitlines()[-1] == "| `</s>` | a |"
