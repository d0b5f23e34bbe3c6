"""Bad run directories and damaged checkpoints: one line naming the path and the way out, exit 2.

Catalogue rows of issue 16 ("Also seen"): a damaged ``trainer_state.pt``, a full disk during a save,
``attnlab evaluate`` beside the trainer's own ``test_metrics.json``, and inference commands pointed at a
directory that is not a run, or at a run of the other task.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from attnlab.cli.main import main
from attnlab.training import checkpoints as ckpt


def _tiny_config(tmp: Path) -> Path:
    config = {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp / "run"),
        "model": {"type": "cnn", "channels": [4], "blocks": [1], "attention": "se", "reduction": 2},
        "data": {"dataset": "digits", "batch_size": 64, "augment": False},
        "training": {
            "max_steps": 2,
            "eval_every": 2,
            "schedule": "constant",
            "lr": 1e-3,
            "num_threads": 1,
            "tensorboard": False,
            "eval_at_epoch_end": False,
            "final_split": "test",
        },
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A two-step digits CNN run with ``best``, ``last`` and the trainer's ``test_metrics.json``."""
    tmp = tmp_path_factory.mktemp("bad_runs")
    assert main(["train", str(_tiny_config(tmp)), "--no-progress"]) == 0
    return tmp / "run"


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    """A private copy of :func:`trained_run` (tests here damage it)."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def _resume(run: Path, *overrides: str) -> int:
    """``attnlab train`` on ``run`` (a :func:`run_copy`), resuming from its ``last`` checkpoint."""
    return main(["train", str(_tiny_config(run.parent)), *overrides, "--no-progress"])


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- damaged trainer state
def test_a_damaged_trainer_state_names_the_file_and_the_ways_to_recover(run_copy, capsys):
    state = run_copy / "checkpoints" / "last" / ckpt.STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # cut short, as by a failing disk
    capsys.readouterr()
    assert _resume(run_copy, "training.max_steps=4") == 2
    line = _one_line(capsys.readouterr().err)
    assert str(state) in line and "damaged" in line
    assert str(run_copy / "checkpoints" / "best") in line and "--fresh" in line
    assert "weights_only" not in line


def test_a_damaged_trainer_state_without_another_checkpoint_suggests_fresh(run_copy):
    shutil.rmtree(run_copy / "checkpoints" / "best")
    state = run_copy / "checkpoints" / "last" / ckpt.STATE_FILE
    state.write_bytes(b"not a torch file")
    with pytest.raises(ckpt.CheckpointError, match="damaged; start over with --fresh") as raised:
        ckpt.load_trainer_state(state.parent)
    assert str(state) in str(raised.value) and "weights_only" not in str(raised.value)


# ----------------------------------------------------------------------------- full disk
FULL_DISK = {
    "torch's words": RuntimeError(
        "[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/0: "
        "file write failed / unexpected pos 1088 vs 1040"
    ),
    "ENOSPC": OSError(errno.ENOSPC, "No space left on device"),
}


@pytest.mark.parametrize("failure", FULL_DISK.values(), ids=FULL_DISK.keys())
def test_a_full_disk_during_a_save_says_so_naming_the_folder(run_copy, monkeypatch, capsys, failure):
    last = run_copy / "checkpoints" / "last"
    step_before = ckpt.load_trainer_state(last)["trainer"]["step"]

    def full_disk(*args, **kwargs):
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert _resume(run_copy, "training.max_steps=4") == 2
    line = _one_line(capsys.readouterr().err)
    assert f"no space left on device in {run_copy / 'checkpoints'}" in line
    monkeypatch.undo()
    assert ckpt.load_trainer_state(last)["trainer"]["step"] == step_before  # the previous save is intact
    assert not list((run_copy / "checkpoints").glob(".*.tmp-*"))


def test_a_full_disk_while_writing_the_weights_is_named_too(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_model", full_disk)
    with pytest.raises(ckpt.CheckpointError, match=f"no space left on device in {tmp_path}"):
        ckpt.save_checkpoint(tmp_path / "last", torch.nn.Linear(2, 2), "a: 1\n")


def test_other_write_errors_pass_through_unchanged(tmp_path, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(ckpt, "save_model", denied)
    with pytest.raises(PermissionError):
        ckpt.save_checkpoint(tmp_path / "last", torch.nn.Linear(2, 2), "a: 1\n")


# ----------------------------------------------------------------------------- evaluate's report
@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_evaluate_keeps_the_trainers_metrics_and_records_its_checkpoint(run_copy, capsys, checkpoint):
    trainers = run_copy / "test_metrics.json"
    before = trainers.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(run_copy), "--split", "test", "--checkpoint", checkpoint]) == 0
    assert trainers.read_bytes() == before
    out = run_copy / f"test_metrics_evaluate_{checkpoint}.json"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"wrote {out}"
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["checkpoint"] == str(run_copy / "checkpoints" / checkpoint) and report["split"] == "test"
    if checkpoint == "best":  # the trainer scored best on test too: the same numbers
        trainer_scores = {k: v for k, v in json.loads(before).items() if not k.endswith("_png")}
        assert {k: report[k] for k in trainer_scores} == trainer_scores


# ----------------------------------------------------------------------------- not a run
def _not_runs(tmp_path: Path, trained_run: Path) -> dict[str, tuple[Path, str]]:
    """Directories that are not runs, each with what the error must say is missing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "tiny.yaml"
    a_file.write_text("task: classification\n", encoding="utf-8")
    no_weights = Path(shutil.copytree(trained_run, tmp_path / "no_weights"))
    for name in ("best", "last"):
        (no_weights / "checkpoints" / name / ckpt.MODEL_FILE).unlink()
    no_config = Path(shutil.copytree(trained_run / "checkpoints" / "last", tmp_path / "no_config"))
    (no_config / ckpt.CONFIG_FILE).unlink()
    return {
        "missing": (tmp_path / "nowhere", "does not exist"),
        "empty": (empty, "missing checkpoints/best/ or checkpoints/last/"),
        "file": (a_file, "is not a run directory but a file"),
        "no weights": (no_weights, "incomplete: missing model.safetensors"),
        "no config": (no_config, "missing config.yaml"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "file", "no weights", "no config"])
@pytest.mark.parametrize(
    "command",
    [["translate", "--text", "x"], ["classify", "x.png"], ["evaluate"]],
    ids=["translate", "classify", "evaluate"],
)
def test_inference_on_a_directory_that_is_not_a_run_is_one_line_exit_2(trained_run, tmp_path, capsys, case, command):
    path, missing = _not_runs(tmp_path, trained_run)[case]
    capsys.readouterr()
    assert main([command[0], str(path), *command[1:]]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"attnlab {command[0]}: error: ") and str(path) in line and missing in line


def test_translate_on_a_classification_run_names_both_tasks(trained_run, capsys):
    capsys.readouterr()
    assert main(["translate", str(trained_run), "--text", "x"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(trained_run) in line and "is a classification run" in line and "expected a translation run" in line


def test_evaluate_a_checkpoint_the_run_does_not_hold_names_those_it_holds(trained_run, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--checkpoint", "middle"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("attnlab evaluate: error: ") and str(trained_run) in line
    assert "checkpoint 'middle' is not one of ['best', 'last']" in line


# ----------------------------------------------------------------------------- resuming another model
def test_damaged_weights_on_resume_are_called_damaged_not_another_model(run_copy, capsys):
    weights = run_copy / "checkpoints" / "last" / ckpt.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:200])  # cut short: the header promises more than the file holds
    capsys.readouterr()
    assert _resume(run_copy, "training.max_steps=4") == 2
    line = _one_line(capsys.readouterr().err)
    assert str(weights) in line and "damaged" in line and "another model" not in line
    assert str(run_copy / "checkpoints" / "best") in line and "--fresh" in line


def test_resuming_with_a_changed_model_says_another_model_in_one_line(run_copy, capsys):
    capsys.readouterr()
    assert _resume(run_copy, "training.max_steps=4", "model.channels=[8]") == 2
    line = _one_line(capsys.readouterr().err)
    assert str(run_copy / "checkpoints" / "last") in line and "holds another model" in line and "--fresh" in line
    assert "is [4" in line and "[8" in line  # the first tensor whose shape differs, both shapes


def test_weights_of_another_shape_raise_the_mismatch_error_naming_the_tensor(trained_run):
    from attnlab.training import load_config

    config = load_config(_tiny_config(trained_run.parent), ["model.channels=[8]"])
    model = config.model.build(config.model.resolve(in_channels=1, num_classes=10))
    with pytest.raises(ckpt.WeightsMismatchError, match=r"do not fit the model: \S+ is \[4"):
        ckpt.load_weights(model, trained_run / "checkpoints" / "last")


# ----------------------------------------------------------------------------- leftovers and odd run directories
def test_an_interrupted_saves_temp_folder_is_removed_at_the_next_start(run_copy):
    orphan = run_copy / "checkpoints" / ".last.tmp-killed"
    orphan.mkdir()
    (orphan / ckpt.MODEL_FILE).write_bytes(b"half a file")
    assert _resume(run_copy, "training.max_steps=3") == 0
    assert not orphan.exists()


def test_an_output_dir_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    (tmp_path / "run").write_text("not a folder", encoding="utf-8")
    capsys.readouterr()
    assert main(["train", str(config), "--no-progress"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(tmp_path / "run") in line
