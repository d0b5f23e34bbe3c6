"""The chunked output-projection loss against PyTorch's F.cross_entropy of F.linear, and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attnlab.training.linear_cross_entropy import linear_cross_entropy

IGNORE = 0


def problem(dtype: torch.dtype, n: int = 13, d: int = 6, v: int = 11, seed: int = 0):
    torch.manual_seed(seed)
    hidden = torch.randn(n, d, dtype=dtype, requires_grad=True)
    weight = torch.randn(v, d, dtype=dtype, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[[1, n - 2]] = IGNORE  # padding rows
    return hidden, weight, targets


def reference(hidden, weight, targets, smoothing):
    logits = F.linear(hidden, weight).float() if hidden.dtype != torch.float64 else F.linear(hidden, weight)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum", label_smoothing=smoothing)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows", [1, 4, 13, 50])
def test_value_and_gradients_are_pytorchs_in_float64(smoothing, rows):
    hidden, weight, targets = problem(torch.float64)
    ours = linear_cross_entropy(
        hidden, weight, targets, ignore_index=IGNORE, label_smoothing=smoothing, chunk_rows=rows
    )
    ours_grads = torch.autograd.grad(ours * 1.7, (hidden, weight))
    theirs = reference(hidden, weight, targets, smoothing)
    theirs_grads = torch.autograd.grad(theirs * 1.7, (hidden, weight))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    for mine, ref in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(mine, ref, rtol=1e-12, atol=1e-12)
    assert ours_grads[0][[1, 11]].abs().max() == 0  # ignored rows get no gradient


def test_gradcheck_in_float64():
    hidden, weight, targets = problem(torch.float64, n=5, d=3, v=4)
    assert torch.autograd.gradcheck(
        lambda h, w: linear_cross_entropy(h, w, targets, ignore_index=IGNORE, label_smoothing=0.2, chunk_rows=2),
        (hidden, weight),
    )


def test_under_bf16_autocast_it_matches_an_nn_linear_under_autocast():
    hidden, weight, targets = problem(torch.float32, n=64, d=32, v=50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE, label_smoothing=0.1, chunk_rows=16)
        theirs = reference(hidden, weight, targets, 0.1)
    mine = torch.autograd.grad(ours, (hidden, weight))
    ref = torch.autograd.grad(theirs, (hidden, weight))
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-3)
    for a, b in zip(mine, ref):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_without_gradients_it_only_scores():
    hidden, weight, targets = problem(torch.float32)
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE)
    torch.testing.assert_close(loss, reference(hidden.detach(), weight.detach(), targets, 0.0))


@pytest.mark.parametrize(
    "args, words",
    [
        ((torch.zeros(3, 4), torch.zeros(5, 3), torch.zeros(3, dtype=torch.long)), r"must be \(N, d\) and \(V, d\)"),
        ((torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long)), r"targets \[2\] must be \(3,\)"),
    ],
)
def test_bad_shapes_are_named(args, words):
    with pytest.raises(ValueError, match=words):
        linear_cross_entropy(*args)


def test_bad_smoothing_is_named():
    hidden, weight, targets = problem(torch.float32)
    with pytest.raises(ValueError, match=r"label_smoothing \(1.0\) must be in \[0, 1\)"):
        linear_cross_entropy(hidden, weight, targets, label_smoothing=1.0)


def test_the_translation_loss_equals_cross_entropy_of_the_models_logits(tmp_path, tiny_translation_config):
    """The task's chunked loss of a Transformer equals F.cross_entropy of its logits, with gradients."""
    from attnlab.training import RunConfig, Trainer

    trainer = Trainer(RunConfig.from_dict(tiny_translation_config(tmp_path, max_steps=1, label_smoothing=0.1)))
    trainer.setup()
    model, task = trainer.model.double().eval(), trainer.task  # eval: no dropout, both passes alike
    batch = next(iter(task.train_batches(0)))
    ours, count = task.loss(model, batch)
    ours_grads = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True)
    logits = model(batch.src, batch.tgt_in)
    theirs = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        batch.tgt_out.reshape(-1),
        ignore_index=0,
        reduction="sum",
        label_smoothing=0.1,
    )
    theirs_grads = torch.autograd.grad(theirs, list(model.parameters()), allow_unused=True)
    assert count == int((batch.tgt_out != 0).sum())
    torch.testing.assert_close(ours.double(), theirs, rtol=1e-6, atol=1e-5)
    for mine, ref in zip(ours_grads, theirs_grads):
        if ref is not None:
            torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-10)
