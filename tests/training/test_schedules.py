"""Schedules: the paper's warmup formula, the LR each optimiser step actually uses."""

from __future__ import annotations

import math

import pytest
import torch

from attnlab.training.schedules import build_scheduler, cosine_factor, noam_factor


def paper(step: int, d_model: int, warmup: int) -> float:
    """Vaswani et al. (2017), Eq. 3."""
    return d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


@pytest.mark.parametrize("step", [1, 2, 100, 3999, 4000, 4001, 10_000, 100_000])
def test_noam_factor_is_the_paper_formula(step):
    assert noam_factor(step, 512, 4000) == pytest.approx(paper(step, 512, 4000), rel=1e-12)


def test_noam_peaks_at_warmup():
    assert noam_factor(4000, 512, 4000) == pytest.approx(512**-0.5 * 4000**-0.5)
    assert noam_factor(3999, 512, 4000) < noam_factor(4000, 512, 4000) > noam_factor(4001, 512, 4000)


def test_scheduler_gives_each_optimizer_step_the_formula_scaled():
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=2.0)
    scheduler = build_scheduler(optimizer, "noam", warmup_steps=10, d_model=64)
    seen = {}
    for step in range(1, 31):
        seen[step] = optimizer.param_groups[0]["lr"]  # the LR this update uses
        optimizer.step()
        scheduler.step()
    for step in (1, 5, 10, 11, 30):
        assert seen[step] == pytest.approx(2.0 * paper(step, 64, 10), rel=1e-12)


def test_cosine_warms_up_then_decays_to_the_floor():
    assert cosine_factor(5, 10, 100) == pytest.approx(0.5)
    assert cosine_factor(10, 10, 100) == pytest.approx(1.0)
    assert cosine_factor(55, 10, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 10, 100, min_ratio=0.1) == pytest.approx(0.1)
    assert math.isclose(cosine_factor(1000, 10, 100), 0.0, abs_tol=1e-12)
