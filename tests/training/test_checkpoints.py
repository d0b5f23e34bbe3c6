"""Checkpoints: round trip of weights, optimiser and config; a failed save leaves the old one intact."""

from __future__ import annotations

import pytest
import torch
import yaml

from attnlab.training import checkpoints as ckpt


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model[1].weight = torch.nn.Parameter(torch.randn(2, 8))
    return model


def test_round_trip_weights_optimizer_rng_and_config(tmp_path):
    model = small_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    rng = ckpt.capture_rng_state()
    expected_draw = torch.rand(3)
    state = {"optimizer": optimizer.state_dict(), "trainer": {"step": 1}, "rng": rng}
    directory = ckpt.save_checkpoint(
        tmp_path / "checkpoints" / "last", model, "task: x\n", state, lambda d: (d / "extra.json").write_text("{}")
    )
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.yaml",
        "extra.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    restored = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    ckpt.load_weights(restored, directory)
    for a, b in zip(model.state_dict().values(), restored.state_dict().values()):
        assert torch.equal(a, b)
    loaded = ckpt.load_trainer_state(directory)
    other = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    other.load_state_dict(loaded["optimizer"])
    assert torch.equal(other.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    ckpt.restore_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(3), expected_draw)
    assert yaml.safe_load(ckpt.read_config_text(directory)) == {"task": "x"}


def test_failure_during_save_leaves_previous_checkpoint_intact(tmp_path):
    model = small_model()
    target = tmp_path / "checkpoints" / "last"
    ckpt.save_checkpoint(target, model, "version: 1\n", {"trainer": {"step": 1}})
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def explode(directory):
        (directory / "half_written.bin").write_bytes(b"\0" * 10)
        raise OSError("disk full (simulated)")

    with torch.no_grad():
        model[0].weight.add_(1.0)
    with pytest.raises(OSError, match="simulated"):
        ckpt.save_checkpoint(target, model, "version: 2\n", {"trainer": {"step": 2}}, explode)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in target.parent.iterdir()] == ["last"]  # no temporary left behind


def test_interrupted_swap_is_recovered(tmp_path):
    target = ckpt.save_checkpoint(tmp_path / "checkpoints" / "last", small_model(), "a: 1\n")
    target.rename(target.with_name(".last.old"))  # a crash between the two renames
    assert ckpt.find_checkpoint(tmp_path, "last") == target
    assert (target / "model.safetensors").is_file()


def test_missing_and_corrupt_files_are_named(tmp_path):
    target = ckpt.save_checkpoint(tmp_path / "last", small_model(), "a: 1\n", {"x": 1})
    (target / "trainer_state.pt").write_bytes(b"not a torch file")
    with pytest.raises(ckpt.CheckpointError, match="cannot read trainer state .*trainer_state.pt"):
        ckpt.load_trainer_state(target)
    (target / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match="incomplete: missing model.safetensors"):
        ckpt.load_weights(small_model(), target)
