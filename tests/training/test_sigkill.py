"""SIGKILL at random moments, some inside checkpoint writes: every resume ends where an uninterrupted run ends.

A tiny digits CNN (augmented, with dropout, so the RNG states matter) trains in a subprocess that
is killed with SIGKILL (no handler runs) and started again with the same command until it finishes.
The reference is one uninterrupted run of the same config. "Equal" means:

- the final weights of ``checkpoints/last`` and ``checkpoints/best`` are bitwise equal (every tensor
  compared as raw bits);
- ``metrics.jsonl`` holds the same records in the same order, each equal key by key once the
  wall-clock keys (:data:`TIMING_KEYS`) are left out.

A kill "inside a checkpoint write" is one sent while a temporary checkpoint folder
(``checkpoints/.last.tmp-*``, ``.best.tmp-*``) exists, found by polling; it counts only if the folder
is still there once the process is dead (the save was cut, not finished).
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnlab.cli.main import main

REPO = Path(__file__).resolve().parents[2]
# Keys whose values are wall-clock readings, different in every run by nature.
TIMING_KEYS = frozenset({"time", "images_per_second"})
START_TIMEOUT_S = 120


def _config(tmp_path: Path, name: str, max_steps: int) -> Path:
    config = {
        "task": "classification",
        "seed": 0,
        "output_dir": str(tmp_path / name),
        "model": {"type": "cnn", "channels": [4], "blocks": [1], "attention": "se", "reduction": 2, "dropout": 0.2},
        "data": {"dataset": "digits", "batch_size": 32, "augment": True},
        "training": {
            "max_steps": max_steps,
            "eval_every": 2,
            "checkpoint_every": 1,
            "log_every": 3,  # train records average over windows that a kill cuts
            "schedule": "constant",
            "lr": 3e-3,
            "num_threads": 1,
            "tensorboard": False,
            "eval_at_epoch_end": False,
            "final_split": None,
        },
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "attnlab.cli.main", "train", str(config), "--no-progress"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train(config: Path) -> None:
    """One uninterrupted run (or the rest of a killed one), in a process of its own as the killed ones."""
    process = _start(config)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err


def _saves_in_progress(run_dir: Path) -> list[Path]:
    checkpoints = run_dir / "checkpoints"
    return [*checkpoints.glob(".*.tmp-*")] if checkpoints.is_dir() else []


def _last_step(run_dir: Path) -> int:
    """The step of the last complete ``train`` record of ``metrics.jsonl`` (0 if none)."""
    path = run_dir / "metrics.jsonl"
    step = 0
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            step = max(step, record.get("step", 0))
    return step


def _run_and_kill(config: Path, ready: Callable[[], object]) -> bool:
    """Start a run and SIGKILL it as soon as ``ready()`` (polled); False when it finished first."""
    process = _start(config)
    deadline = time.monotonic() + START_TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            return True
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    return False


def _step_and_save(run_dir: Path, step: int) -> Callable[[], bool]:
    """Ready once ``metrics.jsonl`` reached ``step`` and a checkpoint is being written."""
    return lambda: _last_step(run_dir) >= step and bool(_saves_in_progress(run_dir))


def _records(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


def _bits(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so that equality is bitwise (NaN equals NaN, -0.0 differs from 0.0)."""
    return tensor.reshape(-1).contiguous().view(torch.uint8)


def _assert_same_run(run: Path, reference: Path) -> None:
    for name in ("last", "best"):
        got = load_file(str(run / "checkpoints" / name / "model.safetensors"))
        want = load_file(str(reference / "checkpoints" / name / "model.safetensors"))
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            assert torch.equal(_bits(got[key]), _bits(tensor)), f"{name}/{key} differs"
    assert _records(run) == _records(reference)
    assert not _saves_in_progress(run)


def test_a_kill_inside_a_checkpoint_write_resumes_to_the_same_weights_and_metrics(tmp_path: Path) -> None:
    max_steps = 4
    assert main(["train", str(_config(tmp_path, "reference", max_steps)), "--no-progress"]) == 0  # saves a start
    config, run_dir = _config(tmp_path, "killed", max_steps), tmp_path / "killed"
    for _ in range(2):  # a save may finish between the poll that saw it and the kill: then kill the next one
        assert _run_and_kill(config, _step_and_save(run_dir, 2)), "the run ended before a save could be cut"
        if _saves_in_progress(run_dir):
            break
    assert _saves_in_progress(run_dir), "no kill landed inside a checkpoint write"
    _train(config)
    _assert_same_run(run_dir, tmp_path / "reference")


@pytest.mark.slow
def test_a_dozen_random_sigkills_resume_to_the_same_weights_and_metrics(tmp_path: Path) -> None:
    max_steps, kills_wanted = 40, 12
    _train(_config(tmp_path, "reference", max_steps))
    config, run_dir = _config(tmp_path, "killed", max_steps), tmp_path / "killed"
    rng = random.Random(16)
    kills = cut_saves = 0
    while kills < kills_wanted:
        step = _last_step(run_dir) + rng.randint(1, 3)
        inside_a_save = kills % 2 == 1  # every other kill waits for a checkpoint write
        ready = _step_and_save(run_dir, step) if inside_a_save else (lambda step=step: _last_step(run_dir) >= step)
        if not _run_and_kill(config, ready):
            break  # the run finished
        kills += 1
        cut_saves += inside_a_save and bool(_saves_in_progress(run_dir))
    assert kills >= 10 and cut_saves >= 3, (kills, cut_saves)
    _train(config)
    _assert_same_run(run_dir, tmp_path / "reference")
