"""Positional encodings against the paper's formula; RoPE's norm and relative-position properties."""

import math

import pytest
import torch

from attnlab import FeedForward, LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding


@pytest.mark.parametrize("dim", [8, 7])
def test_sinusoidal_equals_the_paper_value_by_value(dim):
    pe = SinusoidalPositionalEncoding(dim, max_len=4)
    x = torch.zeros(1, 11, dim)
    out = pe(x, offset=2)[0]  # grows past max_len on the fly
    for pos in range(11):
        for i in range(dim):
            angle = (pos + 2) / 10000 ** (2 * (i // 2) / dim)
            expected = math.sin(angle) if i % 2 == 0 else math.cos(angle)
            assert out[pos, i].item() == pytest.approx(expected, abs=1e-6)


def test_sinusoidal_adds_to_the_input():
    pe = SinusoidalPositionalEncoding(6)
    x = torch.randn(2, 5, 6)
    torch.testing.assert_close(pe(x) - x, pe(torch.zeros(1, 5, 6)).expand(2, 5, 6))


def test_rope_preserves_norms():
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 10, 16)
    torch.testing.assert_close(rope(x, offset=5).norm(dim=-1), x.norm(dim=-1))


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    rope = rope.double()

    def score(m, n):
        return (rope(q.view(1, 8), offset=m) @ rope(k.view(1, 8), offset=n).T).item()

    for shift in (0, 3, 17):
        assert score(4 + shift, 1 + shift) == pytest.approx(score(4, 1), abs=1e-10)
    assert score(4, 1) != pytest.approx(score(4, 2), abs=1e-3)


def test_rope_at_position_zero_is_identity_and_rotates_pairs():
    rope = RotaryEmbedding(4, base=100.0)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(rope(x), x)
    # Position 1: pair (x0, x2) turns by 1 rad, pair (x1, x3) by 100^-0.5 rad.
    out = rope(torch.cat([x, x]))[1]
    for i, theta in ((0, 1.0), (1, 0.1)):
        a, b = x[0, i].item(), x[0, i + 2].item()
        assert out[i].item() == pytest.approx(a * math.cos(theta) - b * math.sin(theta), abs=1e-6)
        assert out[i + 2].item() == pytest.approx(b * math.cos(theta) + a * math.sin(theta), abs=1e-6)


def test_learned_positions_and_errors():
    emb = LearnedPositionalEmbedding(6, 4)
    x = torch.zeros(2, 3, 4)
    torch.testing.assert_close(emb(x, offset=2)[0], emb.weight[2:5].detach())
    with pytest.raises(ValueError, match="positions up to 7 requested, but .* max_len 6"):
        emb(torch.zeros(1, 6, 4), offset=2)
    with pytest.raises(ValueError, match=r"expects inputs \(\.\.\., L, 4\), got shape \(1, 3, 5\)"):
        emb(torch.zeros(1, 3, 5))
    with pytest.raises(ValueError, match="even dim"):
        RotaryEmbedding(5)


def test_feedforward_is_the_paper_formula():
    torch.manual_seed(0)
    ffn = FeedForward(4, 8)
    x = torch.randn(2, 3, 4)
    expected = torch.relu(x @ ffn.fc1.weight.T + ffn.fc1.bias) @ ffn.fc2.weight.T + ffn.fc2.bias
    torch.testing.assert_close(ffn(x), expected)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        FeedForward(4, 8, activation="swish")
