"""Several batches a step: data-parallel training under torchrun (two processes, one batch each a
step) and gradient accumulation (one process, two batches a step), each against one process
that trains on the same two batches' summed loss a step (the definition of both)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from attnlab.training import RunConfig, Trainer
from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state, load_weights
from attnlab.training.translation import TranslationTask

STEPS = 6


def _torchrun(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "attnlab.cli.main",
        "train",
        str(config_path),
        *args,
        "--no-progress",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


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


def _assert_same_weights(expected_model: torch.nn.Module, model: torch.nn.Module) -> None:
    d_model = expected_model.config.d_model
    queries_and_values = torch.cat([torch.arange(d_model), torch.arange(2 * d_model, 3 * d_model)])
    for (name, expected), got in zip(expected_model.state_dict().items(), model.state_dict().values()):
        if name.endswith("in_proj_bias"):
            # The key bias has no gradient (softmax ignores a score added to every key), and Adam
            # scales each side's rounding noise there to whole steps: compare the rest.
            got, expected = got[queries_and_values], expected[queries_and_values]
        torch.testing.assert_close(got, expected, atol=3e-5, rtol=1e-4, msg=name)


def test_two_processes_train_like_one_process_on_both_batches(tmp_path, tiny_translation_config):
    def config(name: str) -> dict:
        raw = tiny_translation_config(tmp_path / name, max_steps=STEPS)
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
    logged = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if row["kind"] == "train"] == list(range(2, STEPS + 1, 2))
    assert not (tmp_path / "ddp" / ".distributed").exists()

    reference_config = RunConfig.from_dict(config("one"))
    reference = Trainer(reference_config, task=TwoBatchesAStep(TranslationTask(reference_config), last))
    reference.run()
    one_logged = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "grad_norm"):  # Adam would hide a wrong gradient scale: the norms show it
        ddp_values = [row[key] for row in logged if row["kind"] == "train"]
        one_values = [row[key] for row in one_logged if row["kind"] == "train"]
        torch.testing.assert_close(ddp_values, one_values, rtol=1e-5, atol=1e-6, msg=key)

    trained = TranslationTask(reference_config)
    trained.prepare(torch.device("cpu"), restore_from=last, need_data=False)
    model = trained.build_model()
    load_weights(model, last)
    _assert_same_weights(reference.model, model)


def test_two_processes_resume_where_they_stopped(tmp_path, tiny_translation_config):
    """With dropout (each process draws its own masks from seed, rank and step): 4 steps, then
    a restart to 8, ends where 8 steps without a stop do."""
    for name in ("whole", "stopped"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(tiny_translation_config(tmp_path / name, max_steps=8)))
    assert _torchrun(tmp_path / "whole.yaml").returncode == 0
    first = _torchrun(tmp_path / "stopped.yaml", "training.max_steps=4")
    assert first.returncode == 0 and "stopped: max_steps at step 4" in first.stdout
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
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(tmp_path / "fails_once.py"),
        str(tmp_path / "config.json"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
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
        tiny_translation_config(tmp_path / "acc", max_steps=STEPS, accumulate_batches=2)
    )
    accumulated = Trainer(accumulated_config)
    accumulated.run()
    last = checkpoint_dir(tmp_path / "acc", "last")
    assert load_trainer_state(last)["trainer"]["batch_in_epoch"] == 2 * STEPS
    reference_config = RunConfig.from_dict(tiny_translation_config(tmp_path / "one", max_steps=STEPS))
    reference = Trainer(reference_config, task=TwoBatchesAStep(TranslationTask(reference_config), last))
    reference.run()
    logged = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("acc", "one")
    }
    for key in ("loss", "grad_norm"):  # Adam would hide a wrong gradient scale: the norms show it
        values = {name: [row[key] for row in rows if row["kind"] == "train"] for name, rows in logged.items()}
        torch.testing.assert_close(values["acc"], values["one"], rtol=1e-5, atol=1e-6, msg=key)
    _assert_same_weights(reference.model, accumulated.model)
