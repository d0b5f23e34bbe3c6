"""The trainer: exact resume, bad batches skipped and reported, best/last checkpoints, budgets."""

from __future__ import annotations

import json

import pytest
import torch

from attnlab.training import RunConfig, Trainer
from attnlab.training.checkpoints import checkpoint_dir, load_trainer_state
from attnlab.training.classification import ClassificationTask


class Stop(Exception):
    """Stands in for the process being killed."""


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_after_kill_is_bit_identical(tmp_path, tiny_digits_config):
    # 10 batches per epoch: the run crosses an epoch boundary, is killed after step 13 (last
    # checkpoint at step 12, mid-epoch), resumes, and must match the uninterrupted run at 16.
    settings = dict(max_steps=16, checkpoint_every=4, eval_every=6)
    straight = Trainer(RunConfig.from_dict(tiny_digits_config(str(tmp_path / "a"), **settings)))
    straight.run()

    def kill_at_13(event):
        if event.kind == "step" and event.step == 13:
            raise Stop

    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path / "b"), **settings))
    with pytest.raises(Stop):
        Trainer(config, progress=kill_at_13).run()
    assert load_trainer_state(checkpoint_dir(tmp_path / "b", "last"))["trainer"]["step"] == 12
    resumed = Trainer(config)
    resumed.run()
    assert resumed.resumed_from is not None and resumed.state.step == 16
    expected, actual = params(straight), params(resumed)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_optimizer_is_fused_and_matches_the_per_tensor_update(tmp_path, tiny_digits_config, optimizer):
    config = tiny_digits_config(str(tmp_path), optimizer=optimizer, weight_decay=0.01, max_steps=1)
    trainer = Trainer(RunConfig.from_dict(config))
    trainer.setup()
    assert trainer.optimizer.defaults["fused"] is True
    model = trainer.model
    reference = {name: p.detach().clone() for name, p in model.named_parameters()}
    plain_params = [torch.nn.Parameter(p.clone()) for p in reference.values()]
    t = trainer.config.training
    plain = (torch.optim.Adam if optimizer == "adam" else torch.optim.AdamW)(
        plain_params,
        lr=trainer.optimizer.param_groups[0]["lr"],
        betas=t.betas,
        eps=t.eps,
        weight_decay=t.weight_decay,
        foreach=False,
    )  # the learning rate the schedule set for step 0
    torch.manual_seed(0)
    for _ in range(3):
        grads = [torch.randn_like(p) for p in plain_params]
        for p, q, g in zip(model.parameters(), plain_params, grads):
            p.grad, q.grad = g.clone(), g.clone()
        trainer.optimizer.step()
        plain.step()
    for p, q in zip(model.parameters(), plain_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


class FlakyTask(ClassificationTask):
    """Gives a NaN loss on the 2nd batch and raises on the 4th."""

    calls = 0

    def loss(self, model, batch):
        self.calls += 1
        if self.calls == 2:
            return torch.tensor(float("nan"), requires_grad=True), 1
        if self.calls == 4:
            raise ValueError("corrupt example 17")
        return super().loss(model, batch)


def test_bad_batches_are_skipped_and_reported(tmp_path, tiny_digits_config):
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=6))
    events = []
    trainer = Trainer(config, task=FlakyTask(config), progress=events.append)
    result = trainer.run()
    assert result.step == 6 and result.bad_batches == 2
    assert trainer.state.batch_in_epoch == 8  # 6 trained + 2 skipped
    skips = [e.message for e in events if e.kind == "skip"]
    assert "non-finite loss nan" in skips[0] and "corrupt example 17" in skips[1]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if r["kind"] == "skip"] == [1, 3]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_too_many_bad_batches_stop_the_run(tmp_path, tiny_digits_config):
    from attnlab.training import TrainingError

    class Broken(ClassificationTask):
        def loss(self, model, batch):
            raise RuntimeError("always")

    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=6, max_bad_batches=2))
    with pytest.raises(TrainingError, match="3 bad batches.*always"):
        Trainer(config, task=Broken(config)).run()


def test_evaluation_keeps_best_and_last_and_early_stops(tmp_path, tiny_digits_config):
    config = RunConfig.from_dict(
        tiny_digits_config(
            str(tmp_path), max_steps=200, eval_every=2, early_stopping_patience=2, final_split="test", lr=0.0
        )
    )
    result = Trainer(config).run()  # lr 0: no improvement after the first evaluation
    assert result.stop_reason == "early_stopping" and result.step == 6
    assert result.best_step == 2
    for name in ("best", "last"):
        assert {"model.safetensors", "config.yaml", "trainer_state.pt", "image_spec.json"} <= {
            p.name for p in checkpoint_dir(tmp_path, name).iterdir()
        }
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0
    assert (tmp_path / "confusion_test.png").stat().st_size > 1000
    saved = RunConfig.from_dict(__import__("yaml").safe_load((tmp_path / "config.yaml").read_text()))
    assert saved.model.params["num_classes"] == 10 and saved.model.params["embed_dim"] == 16


def test_time_budget_stops_the_run(tmp_path, tiny_digits_config):
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_minutes=1e-6))
    assert Trainer(config).run().stop_reason == "max_minutes"


def test_a_budget_stop_between_evaluations_evaluates_the_final_weights(tmp_path, tiny_digits_config):
    trainer = Trainer(RunConfig.from_dict(tiny_digits_config(str(tmp_path / "run"), max_steps=7, eval_every=5)))
    trainer.run()
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["kind"] == "val"] == [5, 7]  # 7: the stop, not a multiple of 5
    assert load_trainer_state(checkpoint_dir(tmp_path / "run", "last"))["trainer"]["step"] == 7
    best_step = load_trainer_state(checkpoint_dir(tmp_path / "run", "best"))["trainer"]["best_step"]
    assert best_step == trainer.state.best_step and best_step in (5, 7)


def test_a_repeated_failure_stops_the_run_chained_to_the_original_error(tmp_path, tiny_digits_config):
    from attnlab.training import TrainingError

    class Corrupt(ClassificationTask):
        def loss(self, model, batch):
            raise ValueError("corrupt example")

    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=6, max_bad_batches=1))
    with pytest.raises(TrainingError) as caught:
        Trainer(config, task=Corrupt(config)).run()
    cause = caught.value.__cause__
    assert isinstance(cause, ValueError) and str(cause) == "corrupt example"
    assert cause.__traceback__.tb_next is not None  # the original traceback, down to Corrupt.loss


class EmbeddingOutOfRange(ClassificationTask):
    """Looks tokens up in a 3-row embedding inside an ``nn.Module``: an ``IndexError`` of model code."""

    def loss(self, model, batch):
        torch.nn.Embedding(3, 2)(torch.tensor([5]))
        return super().loss(model, batch)


class TypoInTask(ClassificationTask):
    def loss(self, model, batch):
        return super().loss(model, batch, "unexpected argument")


@pytest.mark.parametrize(("task_class", "error"), [(EmbeddingOutOfRange, IndexError), (TypoInTask, TypeError)])
def test_a_bug_propagates_instead_of_counting_as_a_bad_batch(tmp_path, tiny_digits_config, task_class, error):
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=3))
    events = []
    trainer = Trainer(config, task=task_class(config), progress=events.append)
    with pytest.raises(error):
        trainer.run()
    assert trainer.state.bad_batches == 0 and not [e for e in events if e.kind == "skip"]


def test_is_data_error_tells_data_from_bugs():
    from attnlab.training.errors import BadBatch, TrainingError, is_data_error

    def raised(function):
        try:
            function()
        except Exception as error:
            return error
        raise AssertionError("no error")

    assert is_data_error(BadBatch("non-finite loss nan"))
    assert is_data_error(raised(lambda: [][1]))  # an IndexError of the data pipeline
    assert is_data_error(raised(lambda: int("x")))
    assert not is_data_error(raised(lambda: torch.nn.Embedding(3, 2)(torch.tensor([5]))))
    assert not is_data_error(raised(lambda: None.shape))
    assert not is_data_error(TypeError("forward() takes 2 positional arguments"))
    assert not is_data_error(TrainingError("1 other process(es) stopped on a bug"))


def test_accumulated_steps_skip_a_nan_or_failing_batch_and_go_on(tmp_path, tiny_digits_config):
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=3, accumulate_batches=2))
    trainer = Trainer(config, task=FlakyTask(config))
    result = trainer.run()  # batches 1-2: NaN, 3-4: an error, then three good steps
    assert result.step == 3 and result.bad_batches == 2
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_the_trainer_sets_every_attribute_in_init(tmp_path, tiny_digits_config):
    trainer = Trainer(RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=2)))
    before = set(vars(trainer))
    trainer.run()
    assert set(vars(trainer)) == before


@pytest.mark.parametrize("debug", [False, True])
def test_debug_runs_each_step_under_the_attention_nan_checks(tmp_path, tiny_digits_config, monkeypatch, debug):
    import contextlib

    import attnlab.functional

    entered = []

    @contextlib.contextmanager
    def nan_checks():
        entered.append(True)
        yield

    monkeypatch.setattr(attnlab.functional, "nan_checks", nan_checks, raising=False)
    config = RunConfig.from_dict(tiny_digits_config(str(tmp_path), max_steps=3))
    Trainer(config, debug=debug).run()
    assert len(entered) == (3 if debug else 0)
