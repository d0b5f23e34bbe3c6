"""attnlab average on a tiny trained run: the checkpoint it writes holds the float64 mean and loads."""

from __future__ import annotations

import argparse
import shutil

import pytest
import torch
from safetensors.torch import load_file

import attnlab
from attnlab.cli.average import add_parser
from attnlab.training import CheckpointError, ConfigError, RunConfig, Trainer
from attnlab.training.checkpoints import MODEL_FILE, STATE_FILE, checkpoint_dir
from attnlab.training.runs import load_run


def average(*argv: str) -> int:
    """``attnlab average ARGV`` through the subcommand's own parser (ConfigError and CheckpointError
    are the one-line, exit-2 errors of ``attnlab``)."""
    parser = argparse.ArgumentParser(prog="attnlab")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["average", *argv])
    return args.func(args)


@pytest.fixture
def run_dir(tmp_path, tiny_translation_config):
    """A tiny run saving ``last`` every 3 steps for 6 steps; each save is also kept as ``stepN``, as a
    trainer keeping its last saves would."""
    run_dir = tmp_path / "run"
    config = RunConfig.from_dict(tiny_translation_config(run_dir, max_steps=6, checkpoint_every=3))

    def keep(event):
        if event.kind == "checkpoint":
            shutil.copytree(
                checkpoint_dir(run_dir, "last"), checkpoint_dir(run_dir, f"step{event.step}"), dirs_exist_ok=True
            )

    Trainer(config, progress=keep).run()
    return run_dir


def test_average_writes_the_mean_of_the_last_saves_as_a_loadable_checkpoint(run_dir, capsys):
    assert average(str(run_dir), "--last", "2", "--out", "avg") == 0
    out = capsys.readouterr().out
    assert "step 3" in out and "step 6" in out and "--checkpoint avg" in out
    inputs = [load_file(str(checkpoint_dir(run_dir, name) / MODEL_FILE)) for name in ("step3", "last")]
    averaged = load_file(str(checkpoint_dir(run_dir, "avg") / MODEL_FILE))
    assert averaged.keys() == inputs[0].keys()
    for key, tensor in averaged.items():
        mean = (inputs[0][key].double() + inputs[1][key].double()) / 2
        assert torch.equal(tensor, mean.to(tensor.dtype)), key
    assert not (checkpoint_dir(run_dir, "avg") / STATE_FILE).exists()  # nothing resumes from an average
    loaded = load_run(run_dir, "avg")
    for key, tensor in loaded.model.state_dict().items():
        if key in averaged:
            assert torch.equal(tensor, averaged[key]), key
    assert len(attnlab.load(run_dir, "avg").translate(["March 15, 2024", "forty-two"])) == 2


def test_average_refuses_to_replace_last_and_to_average_too_few_saves(run_dir):
    with pytest.raises(ConfigError, match="resumes from"):
        average(str(run_dir), "--out", "last")
    with pytest.raises(ConfigError, match="plain name"):
        average(str(run_dir), "--out", "../elsewhere")
    with pytest.raises(CheckpointError, match=r"holds 2 checkpoints of distinct steps .*needs 5"):
        average(str(run_dir), "--last", "5")
    with pytest.raises(CheckpointError, match="does not exist"):
        average(str(run_dir / "missing"))
