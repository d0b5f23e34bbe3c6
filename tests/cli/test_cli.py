"""The attnlab command: train writes checkpoints and metrics, classify prints labels, errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from attnlab.cli.main import main

REPO = Path(__file__).parents[2]


def write_config(tmp_path: Path, **training) -> Path:
    config = {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "model": {"type": "cnn", "channels": [8, 16], "blocks": [1, 1], "attention": "se", "reduction": 4},
        "data": {"dataset": "digits", "batch_size": 128, "augment": False},
        "training": {
            "max_steps": 6,
            "eval_every": 3,
            "schedule": "constant",
            "warmup_steps": 2,
            "lr": 3e-3,
            "num_threads": 1,
            "tensorboard": False,
            "eval_at_epoch_end": False,
            **training,
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("cli")
    code = main(["train", str(write_config(tmp_path)), "training.max_steps=6", "--no-progress"])
    assert code == 0
    return tmp_path / "run"


def test_train_writes_checkpoints_metrics_and_config(trained_run):
    for name in ("best", "last"):
        assert (trained_run / "checkpoints" / name / "model.safetensors").is_file()
    kinds = [json.loads(line)["kind"] for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("val") == 2 and kinds[-1] == "test"
    assert yaml.safe_load((trained_run / "config.yaml").read_text())["model"]["attention"] == "se"
    assert (trained_run / "confusion_test.png").is_file()


def test_train_resumes_and_fresh_starts_over(trained_run, capsys):
    config = trained_run.parent / "tiny.yaml"
    assert main(["train", str(config), "training.max_steps=8", "--no-progress"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert main(["train", str(config), "training.max_steps=2", "--fresh", "--no-progress"]) == 0
    assert "stopped: max_steps at step 2" in capsys.readouterr().out


def test_classify_prints_top_labels_for_a_png(trained_run, tmp_path, capsys):
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = tmp_path / "digit.png"
    Image.fromarray(np.rint(digits.images[0] * 255 / 16).astype(np.uint8), mode="L").save(path)
    assert main(["classify", str(trained_run), str(path), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{path}: ")
    labels = line.split(": ", 1)[1].split(", ")
    assert len(labels) == 2 and all(label.split(" (")[0] in "0123456789" for label in labels)


def test_evaluate_prints_test_metrics(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--split", "test"]) == 0
    assert "accuracy" in capsys.readouterr().out
    written = json.loads((trained_run / "test_metrics_evaluate_best.json").read_text())
    assert written["examples"] == 359 and written["checkpoint"].endswith("best")


def test_evaluate_beam_on_a_classification_run_is_a_usage_error(trained_run, capsys):
    assert main(["evaluate", str(trained_run), "--beam", "2"]) == 2
    assert "--beam applies to translation runs" in capsys.readouterr().err


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["train", str(write_config(tmp_path)), "model.d_model=64"]) == 2
    err = capsys.readouterr().err
    assert "model.d_model" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_checkpoint_and_wrong_task_exit_2(trained_run, tmp_path, capsys):
    assert main(["classify", str(tmp_path / "nowhere"), "x.png"]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    assert main(["translate", str(trained_run), "--text", "hello"]) == 2
    assert "is a classification run" in capsys.readouterr().err
    broken = tmp_path / "broken"
    (broken / "checkpoints" / "best").mkdir(parents=True)
    assert main(["evaluate", str(broken)]) == 2
    assert "missing config.yaml" in capsys.readouterr().err


def test_console_entry_point_exit_code(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "attnlab.cli.main", "train", str(write_config(tmp_path)), "training.bogus=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 2
    assert "training.bogus" in result.stderr


def test_options_between_overrides_are_accepted(tmp_path, capsys):
    config = str(write_config(tmp_path))
    assert main(["train", config, "training.max_steps=4", "--fresh", "training.eval_every=2", "--no-progress"]) == 0
    assert "stopped: max_steps at step 4" in capsys.readouterr().out
    assert main(["train", config, "--fresh", "training.max_steps=2", "--no-progress", "training.eval_every=1"]) == 0
    assert "stopped: max_steps at step 2" in capsys.readouterr().out
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in evals if row["kind"] == "val"] == [1, 2]  # eval_every=1, given after the options


def test_a_failed_run_prints_one_line_and_its_traceback_under_debug(tmp_path, capsys, monkeypatch):
    from attnlab.training import TrainingError
    from attnlab.training.classification import ClassificationTask

    def corrupt(self, model, batch):
        raise RuntimeError("corrupt example\nsecond line of the message")

    monkeypatch.setattr(ClassificationTask, "loss", corrupt)
    argv = ["train", str(write_config(tmp_path)), "training.max_bad_batches=0", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "1 bad batches" in err and "--debug" in err
    with pytest.raises(TrainingError) as caught:
        main([*argv, "--debug"])  # --debug after the subcommand, as before it
    assert isinstance(caught.value.__cause__, RuntimeError) and "corrupt example" in str(caught.value.__cause__)


def test_debug_before_the_subcommand_still_counts(tmp_path, monkeypatch):
    from attnlab.cli import main as main_module

    seen = []
    monkeypatch.setattr(main_module.train_cmd, "run", lambda args: seen.append(args.debug) or 0)
    parser_args = ["train", str(write_config(tmp_path))]
    assert main(["--debug", *parser_args]) == 0 and main(parser_args) == 0
    assert seen == [True, False]


def test_ctrl_c_saves_last_exits_130_and_the_run_resumes(tmp_path, capsys):
    import signal
    import time

    config = str(write_config(tmp_path, max_steps=100_000, eval_every=None, log_every=1))
    run_dir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "attnlab.cli.main", "train", config, "--no-progress"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first train record: the loop is running
        assert process.poll() is None, process.communicate()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state

    step = load_trainer_state(checkpoint_dir(run_dir, "last"))["trainer"]["step"]
    assert step >= 1
    assert main(["train", config, f"training.max_steps={step + 2}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"at step {step}" in out and f"stopped: max_steps at step {step + 2}" in out
