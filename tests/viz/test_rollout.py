"""attention_rollout against the formula of Abnar & Zuidema 2020, worked out by hand for L = 3."""

from __future__ import annotations

import pytest
import torch

from attnlab.viz.rollout import attention_rollout, class_token_map


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Three layers of two heads each, L = 3.
LAYERS = [
    torch.stack([t([[1, 0, 0], [1, 0, 0], [1, 0, 0]]), t([[0, 1, 0], [0, 1, 0], [0, 0, 1]])]),
    torch.stack([torch.eye(3, dtype=torch.float64), t([[0, 0, 1], [0, 0, 1], [0, 0, 1]])]),
    torch.full((2, 3, 3), 1 / 3, dtype=torch.float64),
]


def test_three_layers_equal_the_hand_computation():
    # Head means W1 = [[.5,.5,0],[.5,.5,0],[.5,0,.5]], W2 = [[.5,0,.5],[0,.5,.5],[0,0,1]], W3 = J/3.
    # A = 0.5 W + 0.5 I:  A1 = [[.75,.25,0],[.25,.75,0],[.25,0,.75]],  A2 = [[.75,0,.25],[0,.75,.25],[0,0,1]],
    # A3 = J/6 + I/2.  A2 A1 = [[.625,.1875,.1875],[.25,.5625,.1875],[.25,0,.75]], whose column sums
    # are (1.125, .75, 1.125); so A3 A2 A1 = (A2 A1) / 2 + (0.1875, 0.125, 0.1875) in every row.
    expected = t([[0.5, 0.21875, 0.28125], [0.3125, 0.40625, 0.28125], [0.3125, 0.125, 0.5625]])
    torch.testing.assert_close(attention_rollout(LAYERS), expected)


def test_batched_maps_roll_out_per_item():
    batched = [torch.stack([layer, layer.flip(-1)]) for layer in LAYERS]  # (B=2, H, L, L)
    rolled = attention_rollout(batched)
    assert rolled.shape == (2, 3, 3)
    torch.testing.assert_close(rolled[0], attention_rollout(LAYERS))
    torch.testing.assert_close(rolled[1], attention_rollout([layer.flip(-1) for layer in LAYERS]))


def test_max_and_min_head_fusion_by_hand():
    first = t([[0.6, 0.4, 0], [0, 1, 0], [0.2, 0.2, 0.6]])
    second = t([[0.2, 0.2, 0.6], [0.5, 0.5, 0], [0, 0, 1]])
    heads = torch.stack([first, second])
    # max = [[.6,.4,.6],[.5,1,0],[.2,.2,1]]; + I, rows divided by 2.6, 2.5, 2.4.
    maximum = t([[8 / 13, 2 / 13, 3 / 13], [0.2, 0.8, 0], [1 / 12, 1 / 12, 10 / 12]])
    # min = [[.2,.2,0],[0,.5,0],[0,0,.6]]; + I, rows divided by 1.4, 1.5, 1.6.
    minimum = t([[6 / 7, 1 / 7, 0], [0, 1, 0], [0, 0, 1]])
    torch.testing.assert_close(attention_rollout([heads], head_fusion="max"), maximum)
    torch.testing.assert_close(attention_rollout([heads], head_fusion="min"), minimum)


def test_discard_keeps_the_class_token_column_by_hand():
    weights = t([[0.5, 0.3, 0.2], [0.05, 0.7, 0.25], [0.6, 0.35, 0.05]]).unsqueeze(0)  # (H=1, L, L)
    # Outside column 0 the entries are .3 .2 .7 .25 .35 .05; half of six (.05, .2, .25) go, and the
    # smallest entry of all, column 0's .05, stays. + I, rows divided by 1.8, 1.75, 1.95.
    expected = t([[5 / 6, 1 / 6, 0], [1 / 35, 34 / 35, 0], [0.6 / 1.95, 0.35 / 1.95, 1 / 1.95]])
    torch.testing.assert_close(attention_rollout([weights], discard_ratio=0.5), expected)


def test_discard_cuts_each_batch_item_alone():
    torch.manual_seed(0)
    maps = [torch.rand(3, 2, 5, 5, dtype=torch.float64).softmax(-1) for _ in range(2)]
    rolled = attention_rollout(maps, discard_ratio=0.4)
    for item in range(3):
        alone = attention_rollout([layer[item] for layer in maps], discard_ratio=0.4)
        torch.testing.assert_close(rolled[item], alone)


def test_without_residual_the_maps_multiply_as_they_are():
    torch.manual_seed(1)
    maps = [torch.rand(4, 6, 6, dtype=torch.float64).softmax(-1) for _ in range(3)]
    fused = [m.mean(0) for m in maps]
    torch.testing.assert_close(attention_rollout(maps, residual=False), fused[2] @ fused[1] @ fused[0])


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.9])
def test_rows_sum_to_one(fusion, ratio):
    torch.manual_seed(2)
    maps = [torch.rand(2, 3, 7, 7).softmax(-1) for _ in range(4)]
    rolled = attention_rollout(maps, head_fusion=fusion, discard_ratio=ratio)
    torch.testing.assert_close(rolled.sum(-1), torch.ones(2, 7))
    assert (rolled >= 0).all()


def test_a_ratio_too_small_to_discard_anything_equals_no_discard():
    torch.manual_seed(3)
    maps = [torch.rand(2, 4, 4, dtype=torch.float64).softmax(-1) for _ in range(2)]
    # 4 x 3 = 12 candidates: a ratio under 1/12 discards none.
    torch.testing.assert_close(attention_rollout(maps, discard_ratio=0.05), attention_rollout(maps, discard_ratio=0.0))
    assert not torch.equal(attention_rollout(maps, discard_ratio=0.1), attention_rollout(maps))


def test_identity_maps_roll_out_to_the_identity():
    eye = torch.eye(5).expand(3, 5, 5)
    for fusion in ("mean", "max", "min"):
        torch.testing.assert_close(attention_rollout([eye] * 4, head_fusion=fusion), torch.eye(5))


def test_gradcheck_float64():
    torch.manual_seed(4)
    maps = [torch.rand(2, 4, 4, dtype=torch.float64).softmax(-1).requires_grad_() for _ in range(3)]
    assert torch.autograd.gradcheck(lambda *m: attention_rollout(list(m)), maps)


def test_class_token_map_is_the_class_row_without_itself_on_the_grid():
    rolled = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(2, 7, 7)
    grid = class_token_map(rolled, (2, 3))
    assert grid.shape == (2, 2, 3)
    torch.testing.assert_close(grid[1], t([[50, 51, 52], [53, 54, 55]]).float())
    torch.testing.assert_close(class_token_map(rolled[0], (3, 2)), rolled[0, 0, 1:].reshape(3, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"maps": []}, "at least one"),
        ({"maps": [torch.rand(3, 3)]}, r"layer 0 .* got shape \(3, 3\)"),
        ({"maps": [torch.rand(2, 3, 4)]}, r"got shape \(2, 3, 4\)"),
        ({"maps": [torch.rand(2, 3, 3), torch.rand(2, 4, 4)]}, r"layer 1 has shape \(2, 4, 4\), layer 0 has"),
        ({"maps": [torch.rand(2, 3, 3)], "head_fusion": "median"}, "head_fusion must be one of .* got 'median'"),
        ({"maps": [torch.rand(2, 3, 3)], "discard_ratio": 1.0}, r"\[0, 1\), got 1.0"),
        ({"maps": [torch.rand(2, 3, 3)], "discard_ratio": -0.1}, r"\[0, 1\), got -0.1"),
    ],
)
def test_bad_inputs_are_named(kwargs, message):
    maps = kwargs.pop("maps")
    with pytest.raises(ValueError, match=message):
        attention_rollout(maps, **kwargs)


def test_class_token_map_names_a_grid_that_does_not_fit():
    with pytest.raises(ValueError, match="grid 2x2 holds 4 patches, but the map has 6"):
        class_token_map(torch.rand(7, 7), (2, 2))
    with pytest.raises(ValueError, match=r"got shape \(7, 6\)"):
        class_token_map(torch.rand(7, 6), (2, 3))
