"""The run directory: user files never overwritten, failed resumes change nothing, signals save
``last``, interrupted saves are cleaned up, metrics are not duplicated by a resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
import yaml

from attnlab.training import CheckpointError, ConfigError, RunConfig, Trainer, load_config
from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state
from attnlab.training.errors import TrainingInterrupted


class Stop(Exception):
    """Stands in for the process being killed."""


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def records(run_dir: Path) -> list[tuple]:
    """``metrics.jsonl`` without the wall-clock fields, which differ between runs."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [tuple((k, v) for k, v in row.items() if k != "time" and not k.endswith("_per_second")) for row in rows]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_a_user_config_in_the_run_directory_is_never_overwritten(tmp_path, tiny_digits_config):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    user_file = run_dir / "config.yaml"  # output_dir is the config's own folder
    user_file.write_text("# my comments\n" + yaml.safe_dump(tiny_digits_config(str(run_dir), max_steps=2)))
    original = user_file.read_bytes()
    Trainer(load_config(user_file, ["training.max_steps=3"])).run()
    assert user_file.read_bytes() == original
    saved = yaml.safe_load((checkpoint_dir(run_dir, "last") / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 3  # the resolved config, with the override, is kept there
    Trainer(load_config(user_file, ["training.max_steps=4"])).run()  # a resume keeps it too
    assert user_file.read_bytes() == original


def test_the_runs_own_config_is_rewritten_on_resume_without_leftovers(tmp_path, tiny_digits_config):
    values = tiny_digits_config(str(tmp_path / "run"), max_steps=2)
    Trainer(RunConfig.from_dict(values)).run()
    values["training"]["max_steps"] = 3
    Trainer(RunConfig.from_dict(values)).run()
    written = (tmp_path / "run" / "config.yaml").read_text()
    assert written.endswith((checkpoint_dir(tmp_path / "run", "last") / "config.yaml").read_text())
    assert yaml.safe_load(written)["training"]["max_steps"] == 3
    assert not list((tmp_path / "run").rglob(".*tmp*"))


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        ({"embed_dim": 32}, CheckpointError, "holds another model than this config builds: use --fresh"),
        ({"type": "cnn", "channels": [8], "blocks": [1]}, ConfigError, "holds a classification run of a vit model"),
    ],
)
def test_a_failed_resume_leaves_the_run_directory_untouched(tmp_path, tiny_digits_config, model, error, message):
    values = tiny_digits_config(str(tmp_path / "run"), max_steps=2, eval_every=1)
    Trainer(RunConfig.from_dict(values)).run()
    before = snapshot(tmp_path / "run")
    model = {**values["model"], **model} if "type" not in model else model
    with pytest.raises(error) as info:
        Trainer(RunConfig.from_dict({**values, "model": model})).run()
    assert snapshot(tmp_path / "run") == before
    assert message in str(info.value)


def test_a_resume_with_a_config_of_another_task_changes_nothing(tmp_path, tiny_digits_config):
    run_dir = tmp_path / "run"
    Trainer(RunConfig.from_dict(tiny_digits_config(str(run_dir), max_steps=2))).run()
    before = snapshot(run_dir)
    translation = {
        "task": "translation",
        "output_dir": str(run_dir),
        "model": {"type": "transformer", "preset": "tiny"},
        "data": {"corpus": {"name": "generated", "size": 100}, "tokenizer": {"vocab_size": 200}},
        "training": {"max_steps": 2, "schedule": "noam", "tensorboard": False},
    }
    with pytest.raises(ConfigError, match="holds a classification run of a vit model.*--fresh"):
        Trainer(RunConfig.from_dict(translation)).run()
    assert snapshot(run_dir) == before


def test_sigterm_saves_last_at_the_step_boundary_and_the_run_resumes_exactly(tmp_path, tiny_digits_config):
    settings = dict(max_steps=9, eval_every=4, log_every=1)
    straight = Trainer(RunConfig.from_dict(tiny_digits_config(str(tmp_path / "a"), **settings)))
    straight.run()

    def terminate_at_6(event):
        if event.kind == "step" and event.step == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    handler = signal.getsignal(signal.SIGTERM)
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path / "b"), **settings))
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 6") as info:
        Trainer(config, progress=terminate_at_6).run()
    assert info.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) == handler
    assert load_trainer_state(checkpoint_dir(tmp_path / "b", "last"))["trainer"]["step"] == 6
    resumed = Trainer(config)
    resumed.run()
    assert resumed.state.step == 9
    expected, actual = weights(straight), weights(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert records(tmp_path / "b") == records(tmp_path / "a")


def test_a_resume_drops_the_metrics_written_after_the_checkpoint(tmp_path, tiny_digits_config):
    settings = dict(max_steps=16, checkpoint_every=4, eval_every=6)
    straight_dir, killed_dir = tmp_path / "a", tmp_path / "b"
    Trainer(RunConfig.from_dict(tiny_digits_config(str(straight_dir), **settings))).run()

    def kill_at_15(event):
        if event.kind == "step" and event.step == 15:
            raise Stop  # after the records of step 14; the last checkpoint is step 12

    config = RunConfig.from_dict(tiny_digits_config(str(killed_dir), **settings))
    with pytest.raises(Stop):
        Trainer(config, progress=kill_at_15).run()
    assert max(dict(row)["step"] for row in records(killed_dir)) == 14
    Trainer(config).run()
    assert records(killed_dir) == records(straight_dir)


def test_the_temporary_folders_of_interrupted_saves_are_removed_at_the_next_start(tmp_path, tiny_digits_config):
    values = tiny_digits_config(str(tmp_path / "run"), max_steps=2)
    Trainer(RunConfig.from_dict(values)).run()
    orphans = [tmp_path / "run" / "checkpoints" / ".last.tmp-k1ll3d", tmp_path / "run" / "checkpoints" / ".best.tmp-x"]
    for orphan in orphans:
        orphan.mkdir()
        (orphan / "model.safetensors").write_bytes(b"half")
    (tmp_path / "run" / ".config.yaml.k1ll3d.tmp").write_text("half")
    values["training"]["max_steps"] = 3
    Trainer(RunConfig.from_dict(values)).run()
    assert not list((tmp_path / "run").rglob(".*tmp*"))
    assert load_trainer_state(checkpoint_dir(tmp_path / "run", "last"))["trainer"]["step"] == 3
