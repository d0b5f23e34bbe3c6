"""Several batches a step: data-parallel training under torchrun (two processes, one batch each a
step) and gradient accumulation (one process, two batches a step), each against one process
that trains on the same two batches' summed loss a step (the definition of both).

Both sides sum the same float32 terms in different orders, so they agree to rounding, not bit
for bit, and the rounding differs between CPUs (AVX-512, AVX2 and SSE kernels block their sums
differently). The equivalence runs therefore train with Adam's epsilon at ``SMOOTH_ADAM_EPS``: at
the paper's 1e-9 an element whose gradient is rounding alone (the attention key bias, which
softmax ignores) or about as small as epsilon takes a step of either sign from its rounding, and
six steps turn the two sides' rounding into differences of 1e-3 to 2e-1 of a step. With epsilon far
above any gradient element's rounding, Adam's update is a smooth function of the gradient
(``d update / d grad <= 1 / eps``), and the updates agree to the gradients' relative rounding.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from attnlab.training import RunConfig, Trainer
from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state, load_weights
from attnlab.training.translation import TranslationTask

STEPS = 6
# Far above the rounding of any gradient element (float32 epsilon times the gradient norm, about 1).
SMOOTH_ADAM_EPS = 1e-3
# Float32 sums of ~1e3 terms in another order differ by ~sqrt(1e3) float32 epsilons (~2e-6) relative;
# Adam at SMOOTH_ADAM_EPS passes that on to the updates, and 1e-4 of the largest update leaves room
# for six steps of it. A wrong gradient scale or a wrong batch changes the updates by tens of percent.
UPDATE_RTOL = 1e-4
# Losses and gradient norms: the same float32 sums of ~1e3 terms in another order.
METRIC_RTOL = 1e-5


# Two processes on one machine, one thread each.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _start_torchrun(config_path: Path, *args: str) -> subprocess.Popen:
    """``attnlab train config_path args`` in two processes under torchrun, started in the background."""
    command = [*TORCHRUN, "-m", "attnlab.cli.main", "train", str(config_path), *args, "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)


def _finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _torchrun(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return _finished(_start_torchrun(config_path, *args))


class TwoBatchesAStep:
    """The translation task, training on two consecutive batches a step in one process: what
    two processes of a data-parallel run do together. The tokenizer comes from ``tokenizer_from``."""

    def __init__(self, task: TranslationTask, tokenizer_from: Path) -> None:
        self.task, self.tokenizer_from = task, tokenizer_from

    def __getattr__(self, name):
        return getattr(self.task, name)

    def prepare(self, device, restore_from=None, *, need_data=True):
        self.task.prepare(device, restore_from=self.tokenizer_from, need_data=need_data)

    def train_batches(self, epoch, start_batch=0):
        batches = iter(self.task.train_batches(epoch, start_batch))
        return zip(batches, batches)

    def loss(self, model, pair):
        (first, n_first), (second, n_second) = (self.task.loss(model, batch) for batch in pair)
        return first + second, n_first + n_second

    def batch_units(self, pair):
        return sum(self.task.batch_units(batch) for batch in pair)


def _equivalence_config(make_config, output_dir: Path, **training) -> dict:
    """The tiny translation run with a smooth Adam (see the module docstring), logging every step."""
    return make_config(output_dir, max_steps=STEPS, eps=SMOOTH_ADAM_EPS, log_every=1, **training)


def _train_from_start(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Run ``trainer``; its model's weights before the first step."""
    trainer.setup()
    initial = {name: value.clone() for name, value in trainer.model.state_dict().items()}
    trainer.train()
    trainer.cleanup()
    return initial


def _assert_same_updates(
    initial: dict[str, torch.Tensor], expected_model: torch.nn.Module, model: torch.nn.Module
) -> None:
    """Each tensor's change from ``initial`` agrees with the expected one to ``UPDATE_RTOL`` of the
    largest expected change, plus a few units in the last place of the weights themselves."""
    got_weights = model.state_dict()
    for name, expected in expected_model.state_dict().items():
        expected_update, got_update = expected - initial[name], got_weights[name] - initial[name]
        ulp = torch.finfo(expected.dtype).eps * expected.abs().max().item()
        atol = UPDATE_RTOL * expected_update.abs().max().item() + 8 * ulp
        torch.testing.assert_close(got_update, expected_update, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def _assert_same_train_metrics(got_rows: list[dict], expected_rows: list[dict]) -> None:
    """Per-step losses and gradient norms agree: Adam would hide a wrong gradient scale, the norms show it."""
    for key in ("loss", "grad_norm"):
        got = [row[key] for row in got_rows if row["kind"] == "train"]
        expected = [row[key] for row in expected_rows if row["kind"] == "train"]
        torch.testing.assert_close(got, expected, rtol=METRIC_RTOL, atol=0.0, msg=key)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one_process_on_both_batches(tmp_path, tiny_translation_config):
    def config(name: str) -> dict:
        raw = _equivalence_config(tiny_translation_config, tmp_path / name)
        raw["model"]["dropout"] = 0.0  # processes draw different masks; without dropout they must agree
        return raw

    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config("ddp")))
    result = _torchrun(config_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(f"stopped: max_steps at step {STEPS}") == 1  # rank 0 alone reports
    last = checkpoint_dir(tmp_path / "ddp", "last")
    state = load_trainer_state(last)["trainer"]
    assert state["step"] == STEPS and state["batch_in_epoch"] == 2 * STEPS  # every process its own batches
    logged = _metrics(tmp_path / "ddp")
    assert [row["step"] for row in logged if row["kind"] == "train"] == list(range(1, STEPS + 1))
    assert not (tmp_path / "ddp" / ".distributed").exists()

    reference_config = RunConfig.from_dict(config("one"))
    reference = Trainer(reference_config, task=TwoBatchesAStep(TranslationTask(reference_config), last))
    initial = _train_from_start(reference)
    _assert_same_train_metrics(logged, _metrics(tmp_path / "one"))

    trained = TranslationTask(reference_config)
    trained.prepare(torch.device("cpu"), restore_from=last, need_data=False)
    model = trained.build_model()
    load_weights(model, last)
    _assert_same_updates(initial, reference.model, model)


@pytest.mark.slow  # three torchrun launches (~6 s each to import torch and start): make test-all runs it
def test_two_processes_resume_where_they_stopped(tmp_path, tiny_translation_config):
    """With dropout (each process draws its own masks from seed, rank and step): 4 steps, then
    a restart to 8, ends where 8 steps without a stop do."""
    for name in ("whole", "stopped"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(tiny_translation_config(tmp_path / name, max_steps=8)))
    # The uninterrupted run and the first half of the stopped one are independent: side by side.
    started = (
        _start_torchrun(tmp_path / "whole.yaml"),
        _start_torchrun(tmp_path / "stopped.yaml", "training.max_steps=4"),
    )
    whole, first = (_finished(process) for process in started)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert first.returncode == 0 and "stopped: max_steps at step 4" in first.stdout, first.stderr[-3000:]
    resumed = _torchrun(tmp_path / "stopped.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr and "stopped: max_steps at step 8" in resumed.stdout
    whole, stopped = (
        load_file(checkpoint_dir(tmp_path / name, "last") / "model.safetensors") for name in ("whole", "stopped")
    )
    assert whole.keys() == stopped.keys()
    for name in whole:
        assert torch.equal(whole[name], stopped[name]), name


FAILS_ONCE = """
import json, os, sys
from attnlab.training import RunConfig, Trainer
from attnlab.training.translation import TranslationTask

class FailsOnceInRankOne(TranslationTask):
    def loss(self, model, batch):
        if os.environ["RANK"] == "1" and not getattr(self, "failed", False):
            self.failed = True
            raise ValueError("a pair this model cannot take")
        return super().loss(model, batch)

config = RunConfig.from_dict(json.loads(open(sys.argv[1]).read()))
result = Trainer(config, task=FailsOnceInRankOne(config)).run()
print(json.dumps({"rank": int(os.environ["RANK"]), "step": result.step, "bad_batches": result.bad_batches}))
"""


def test_a_batch_failing_in_one_process_skips_the_step_in_all(tmp_path, tiny_translation_config):
    (tmp_path / "config.json").write_text(json.dumps(tiny_translation_config(tmp_path / "run", max_steps=4)))
    (tmp_path / "fails_once.py").write_text(FAILS_ONCE)
    command = [*TORCHRUN, str(tmp_path / "fails_once.py"), str(tmp_path / "config.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=TORCHRUN_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = sorted(
        (json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")), key=lambda r: r["rank"]
    )
    assert reports == [{"rank": 0, "step": 4, "bad_batches": 1}, {"rank": 1, "step": 4, "bad_batches": 1}]
    assert "a pair this model cannot take" in result.stderr  # the failing process says why
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in logged].count("skip") == 1
    state = load_trainer_state(checkpoint_dir(tmp_path / "run", "last"))["trainer"]
    assert state["batch_in_epoch"] == 2 * 5  # four steps and the skipped one, two batches each


def test_accumulating_two_batches_trains_like_one_step_on_both(tmp_path, tiny_translation_config):
    """One process, ``accumulate_batches: 2`` (two backward passes, then one update), against
    the two batches' summed loss in one backward pass; with dropout, drawn in the same order."""
    accumulated_config = RunConfig.from_dict(
        _equivalence_config(tiny_translation_config, tmp_path / "acc", accumulate_batches=2)
    )
    accumulated = Trainer(accumulated_config)
    accumulated.run()
    last = checkpoint_dir(tmp_path / "acc", "last")
    assert load_trainer_state(last)["trainer"]["batch_in_epoch"] == 2 * STEPS
    reference_config = RunConfig.from_dict(_equivalence_config(tiny_translation_config, tmp_path / "one"))
    reference = Trainer(reference_config, task=TwoBatchesAStep(TranslationTask(reference_config), last))
    initial = _train_from_start(reference)
    _assert_same_train_metrics(_metrics(tmp_path / "acc"), _metrics(tmp_path / "one"))
    _assert_same_updates(initial, reference.model, accumulated.model)
