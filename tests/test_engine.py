"""Training engine: checkpoints, RNG capture, data order, hand-computed steps, determinism, exact resume."""
from __future__ import annotations

import json
import pickle
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from wsis.engine import (Checkpointer, EpochSampler, GradClip, HookBase, LRScheduler, Trainer, load_checkpoint,
                         save_checkpoint)
from wsis.engine.checkpoint import capture_rng_state, restore_rng_state
from wsis.errors import InputError


# ---------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_leaves_no_temp_files(tmp_path):
    state = {"model": {"w": torch.arange(6.0).view(2, 3)}, "epoch": 3, "step": 17, "config": {"lr": 0.01, "name": "prm"},
             "rng": [capture_rng_state()]}
    save_checkpoint(tmp_path / "ck" / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "ck" / "last.pt")
    assert torch.equal(loaded["model"]["w"], torch.arange(6.0).view(2, 3))
    assert (loaded["epoch"], loaded["step"], loaded["config"]) == (3, 17, {"lr": 0.01, "name": "prm"})
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.pt"]


def test_corrupt_truncated_and_missing_checkpoints_raise_input_error(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match="garbage.pt.*corrupt"):
        load_checkpoint(garbage)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"w": torch.ones(1000)})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(InputError, match="truncated.pt"):
        load_checkpoint(truncated)
    with pytest.raises(InputError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")


def test_pickled_objects_are_refused(tmp_path):
    # weights_only=True: a checkpoint holding an arbitrary object is rejected, not executed.
    path = tmp_path / "unsafe.pt"
    torch.save({"obj": random.Random(1)}, path)
    with pytest.raises(InputError, match="unsafe.pt"):
        load_checkpoint(path)


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1})
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        save_checkpoint(path, {"epoch": 2, "bad": lambda: 0})  # lambdas cannot be pickled
    assert load_checkpoint(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_rng_state_survives_a_weights_only_round_trip(tmp_path):
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    random.gauss(0, 1), np.random.standard_normal()  # leave cached gaussians in both generators
    save_checkpoint(tmp_path / "rng.pt", {"rng": capture_rng_state()})
    expected = (random.random(), random.gauss(0, 1), np.random.standard_normal(3), torch.rand(3))
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (random.random(), random.gauss(0, 1), np.random.standard_normal(3), torch.rand(3))
    assert expected[:2] == again[:2]
    assert np.array_equal(expected[2], again[2]) and torch.equal(expected[3], again[3])


# ---------------------------------------------------------------- data order

def test_epoch_sampler_depends_on_seed_and_epoch_only():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    b.set_epoch(1), b.set_epoch(0)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    a.set_epoch(1)
    assert list(a) != list(b)
    assert list(EpochSampler(10, seed=4)) != list(b)
    assert list(EpochSampler(4, shuffle=False)) == [0, 1, 2, 3]


def test_epoch_sampler_splits_ranks_and_skips():
    # 5 samples on 2 ranks: padded to 6 by repeating the first index of the permutation.
    full = EpochSampler(5, seed=1).epoch_indices()
    r0, r1 = EpochSampler(5, seed=1, num_replicas=2, rank=0), EpochSampler(5, seed=1, num_replicas=2, rank=1)
    assert list(r0) == [full[0], full[2], full[4]]
    assert list(r1) == [full[1], full[3], full[0]]
    r0.set_start(2)
    assert list(r0) == [full[4]] and len(r0) == 1


# ---------------------------------------------------------------- hand-computed training

def _line_data():
    # y = 3x; model w*x with w = 1, MSE: grad = mean(2 (w x - y) x).
    return TensorDataset(torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [6.0]]))


def _line_model():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model


def test_two_epochs_of_full_batch_sgd_match_hand_computation(tmp_path):
    model = _line_model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.functional.mse_loss,
                      workdir=tmp_path, epochs=2, batch_size=2, device="cpu", progress=False)
    trainer.fit(_line_data())
    # epoch 1: grad = mean(2*(1-3)*1, 2*(2-6)*2) = -10 -> w = 2; epoch 2: grad = mean(-2, -8) = -5 -> w = 2.5
    assert model.weight.item() == pytest.approx(2.5)
    lines = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    epochs = [l for l in lines if l["event"] == "epoch"]
    # losses before each step: mean((1-3)^2, (2-6)^2) = 10, then mean((2-3)^2, (4-6)^2) = 2.5
    assert [l["loss"] for l in epochs] == pytest.approx([10.0, 2.5])
    assert [l["epoch"] for l in epochs] == [1, 2] and [l["step"] for l in epochs] == [1, 2]
    assert all(l["lr"] == 0.1 and l["seconds"] >= 0 for l in epochs)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2


def test_grad_clip_and_step_scheduler(tmp_path):
    model = _line_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    Trainer(model, opt, loss_fn=nn.functional.mse_loss, scheduler=sched, scheduler_interval="step", workdir=tmp_path,
            epochs=2, batch_size=2, device="cpu", grad_clip=1.0, progress=False).fit(_line_data())
    # gradients -10 then -7.9 are clipped to norm 1: w = 1 + 0.1*1 = 1.1, then 1.1 + 0.05*1 = 1.15
    assert model.weight.item() == pytest.approx(1.15)
    epochs = [json.loads(l) for l in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [l["lr"] for l in epochs if l["event"] == "epoch"] == pytest.approx([0.1, 0.05])


class _TwoParts(nn.Module):
    """loss = 10 a + 0.5 b: gradients 10 and 0.5, whatever the batch."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))
        self.b = nn.Parameter(torch.ones(()))

    def forward(self, batch):
        return 10 * self.a + 0.5 * self.b


@pytest.mark.parametrize("per_group, a, b", [
    # each group alone: |10| -> 1, |0.5| stays: a = 1 - 0.1, b = 1 - 0.05
    (True, 0.9, 0.95),
    # together: norm sqrt(100.25) -> 1 scales both by 1/10.0125: a = 1 - 0.1*0.99875, b = 1 - 0.1*0.04994
    (False, 0.900125, 0.995006),
])
def test_grad_clip_per_group_spares_the_small_group(tmp_path, per_group, a, b):
    model = _TwoParts()
    opt = torch.optim.SGD([{"params": [model.a]}, {"params": [model.b]}], lr=0.1)
    Trainer(model, opt, step_fn=lambda m, batch: m(batch), workdir=tmp_path, epochs=1, batch_size=1, device="cpu",
            grad_clip=1.0, grad_clip_per_group=per_group, progress=False,
            shuffle=False).fit(TensorDataset(torch.zeros(1, 1)))
    assert model.a.item() == pytest.approx(a, abs=1e-6)
    assert model.b.item() == pytest.approx(b, abs=1e-6)


def test_step_fn_extra_values_are_logged_and_nan_loss_stops(tmp_path):
    model = _line_model()

    def step(m, batch):
        x, y = batch
        err = m(x) - y
        return (err ** 2).mean(), {"abs_err": err.abs().mean()}

    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), step_fn=step, workdir=tmp_path / "a", epochs=1,
            batch_size=2, device="cpu", progress=False).fit(_line_data())
    line = json.loads((tmp_path / "a" / "log.jsonl").read_text().splitlines()[-1])
    assert line["abs_err"] == pytest.approx(3.0)  # mean(|1-3|, |2-6|)
    with pytest.raises(FloatingPointError, match="step 1"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), step_fn=lambda m, b: m(b[0]).sum() * float("nan"),
                workdir=tmp_path / "b", epochs=1, batch_size=2, device="cpu", progress=False).fit(_line_data())


# ---------------------------------------------------------------- determinism and resume

def _toy_problem(seed: int = 0):
    g = torch.Generator().manual_seed(123)
    data = TensorDataset(torch.randn(12, 4, generator=g), torch.randn(12, 1, generator=g))
    torch.manual_seed(seed)
    # Dropout makes the result depend on the torch RNG, so resume must restore it.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    return model, opt, sched, data


def _train(workdir, epochs, init_seed=0, **kw):
    model, opt, sched, data = _toy_problem(init_seed)
    Trainer(model, opt, loss_fn=nn.functional.mse_loss, scheduler=sched, workdir=workdir, epochs=epochs, seed=7,
            batch_size=4, device="cpu", progress=False, **kw).fit(data)
    return model


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_two_identical_runs_give_identical_parameters(tmp_path):
    a, b = _train(tmp_path / "a", 3), _train(tmp_path / "b", 3)
    assert _same(a, b)
    assert not _same(a, _toy_problem()[0])  # training did move the weights


def test_resume_after_two_epochs_equals_uninterrupted_run(tmp_path):
    full = _train(tmp_path / "full", 4)
    half = _train(tmp_path / "resumed", 2)
    assert not _same(full, half)
    # A new Trainer (with a differently initialised model) continues from last.pt to epoch 4.
    resumed = _train(tmp_path / "resumed", 4, init_seed=99)
    assert _same(full, resumed)
    lines = [json.loads(l) for l in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [l["epoch"] for l in lines if l["event"] == "epoch"] == [1, 2, 3, 4]


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    full = _train(tmp_path / "full", 3)
    model, opt, sched, data = _toy_problem()
    calls = {"n": 0}

    def crashing_step(m, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # step 2 of epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        x, y = batch
        return nn.functional.mse_loss(m(x), y)

    with pytest.raises(KeyboardInterrupt):
        Trainer(model, opt, step_fn=crashing_step, scheduler=sched, workdir=tmp_path / "r", epochs=3, seed=7,
                batch_size=4, device="cpu", progress=False, checkpoint_every=1).fit(data)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (1, 1, 4)
    resumed = _train(tmp_path / "r", 3, init_seed=99, checkpoint_every=1)
    assert _same(full, resumed)


def test_finished_run_is_not_trained_again_and_dataloader_input(tmp_path):
    model, opt, sched, data = _toy_problem()
    loader = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator())
    Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=tmp_path, epochs=2, device="cpu",
            progress=False).fit(loader)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = (tmp_path / "log.jsonl").read_text()
    Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=tmp_path, epochs=2, device="cpu",
            progress=False).fit(loader)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert (tmp_path / "log.jsonl").read_text() == log


def test_corrupt_or_mismatched_last_checkpoint_is_an_input_error(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"\x00" * 50)
    model, opt, _, data = _toy_problem()
    trainer = Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=tmp_path, epochs=1, device="cpu", progress=False)
    with pytest.raises(InputError, match="last.pt"):
        trainer.fit(data)
    other = nn.Linear(4, 1)
    save_checkpoint(tmp_path / "last.pt", {"model": other.state_dict(), "optimizer": {}, "epoch": 1,
                                           "step_in_epoch": 0, "step": 3})
    with pytest.raises(InputError, match="does not fit"):
        trainer.fit(data)


def test_trainer_needs_exactly_one_of_step_fn_and_loss_fn(tmp_path):
    model = _line_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError):
        Trainer(model, opt, workdir=tmp_path, epochs=1)
    with pytest.raises(ValueError):
        Trainer(model, opt, workdir=tmp_path, epochs=1, loss_fn=nn.functional.mse_loss, step_fn=lambda m, b: 0)


class _EpochEcho(torch.utils.data.Dataset):
    """Returns (epoch it was told, index, a draw from numpy's global RNG inside the worker)."""

    def __init__(self) -> None:
        self.epoch = -1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([self.epoch, i, np.random.randint(1_000_000)])


def _seen_batches(workdir, num_workers):
    seen = []
    model = nn.Linear(1, 1)

    def step(m, batch):
        seen.append(batch.clone())
        return m(batch[:, :1].float()).mean()

    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), step_fn=step, workdir=workdir, epochs=2, seed=1,
            batch_size=3, num_workers=num_workers, device="cpu", progress=False).fit(_EpochEcho())
    return torch.cat(seen)


def test_worker_processes_see_the_epoch_and_seeded_rngs(tmp_path):
    a, b = _seen_batches(tmp_path / "a", 2), _seen_batches(tmp_path / "b", 2)
    assert torch.equal(a, b)  # worker RNGs are seeded from (seed, epoch), not from the clock
    assert a[:, 0].tolist() == [0] * 6 + [1] * 6
    assert sorted(a[:6, 1].tolist()) == list(range(6)) and sorted(a[6:, 1].tolist()) == list(range(6))


# ---------------------------------------------------------------- iteration schedules and hooks

class _Slope(nn.Module):
    """loss = w whatever the batch: every SGD step at lr 0.1 lowers w by exactly 0.1."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return self.w * 1.0


def _epoch_lines(workdir):
    lines = [json.loads(l) for l in (workdir / "log.jsonl").read_text().splitlines()]
    return [l for l in lines if l["event"] == "epoch"]


def test_iteration_schedule_runs_exactly_its_count_inside_the_last_epoch(tmp_path):
    # 5 samples, batch 2: 3 steps per epoch (2 + 2 + 1); 7 iterations = 3 + 3 + 1 step of the third epoch
    model = _Slope()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    opt.register_step_post_hook(lambda *_: steps.append(1))
    Trainer(model, opt, step_fn=lambda m, b: m(b), workdir=tmp_path, iterations=7, batch_size=2, device="cpu",
            progress=False).fit(TensorDataset(torch.zeros(5, 1)))
    assert len(steps) == 7
    assert model.w.item() == pytest.approx(-0.7)  # 7 steps of -0.1, not the 9 of three whole epochs
    lines = _epoch_lines(tmp_path)
    assert [l["step"] for l in lines] == [3, 6, 7] and [l["epoch"] for l in lines] == [1, 2, 3]
    assert [l.get("partial", False) for l in lines] == [False, False, True]
    state = load_checkpoint(tmp_path / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["step"]) == (2, 1, 7)
    # a finished schedule is not trained again
    Trainer(model, opt, step_fn=lambda m, b: m(b), workdir=tmp_path, iterations=7, batch_size=2, device="cpu",
            progress=False).fit(TensorDataset(torch.zeros(5, 1)))
    assert len(steps) == 7


def test_trainer_needs_exactly_one_of_epochs_and_iterations(tmp_path):
    model = _line_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="epochs and iterations"):
        Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=tmp_path)
    with pytest.raises(ValueError, match="epochs and iterations"):
        Trainer(model, opt, loss_fn=nn.functional.mse_loss, workdir=tmp_path, epochs=1, iterations=3)


class _Recorder(HookBase):
    def __init__(self, calls, tag=""):
        self.calls, self.tag = calls, tag

    def _note(self, point, trainer):
        self.calls.append(f"{self.tag}{point}@{trainer.epoch}.{trainer.step_in_epoch}")

    def before_train(self, t): self._note("before_train", t)
    def after_train(self, t): self._note("after_train", t)
    def before_epoch(self, t): self._note("before_epoch", t)
    def after_epoch(self, t): self._note("after_epoch", t)
    def before_step(self, t): self._note("before_step", t)
    def after_backward(self, t): self._note("after_backward", t)
    def after_step(self, t): self._note("after_step", t)


class _SaveSpy(Checkpointer):
    def __init__(self, calls, **kw):
        super().__init__(**kw)
        self.calls = calls

    def save(self, trainer, epoch, step_in_epoch):
        self.calls.append(f"save {epoch}.{step_in_epoch}")
        super().save(trainer, epoch, step_in_epoch)


def test_hooks_are_called_in_loop_order_with_the_checkpointer_last(tmp_path):
    calls = []
    model = _Slope()
    # given before the recorder, the checkpointer still runs after it
    hooks = [_SaveSpy(calls, every=2), _Recorder(calls)]
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), step_fn=lambda m, b: m(b), workdir=tmp_path,
            iterations=3, hooks=hooks, batch_size=1, device="cpu", progress=False).fit(TensorDataset(torch.zeros(2, 1)))
    # 2 steps per epoch, 3 iterations; positions are (epoch, steps done in it) when the hook runs
    assert calls == ["before_train@0.0",
                     "before_epoch@0.0",
                     "before_step@0.0", "after_backward@0.0", "after_step@0.1",
                     "before_step@0.1", "after_backward@0.1", "after_step@0.2",
                     "after_epoch@0.2", "save 1.0",  # step 2 ends the epoch: saved once, by after_epoch
                     "before_epoch@1.0",
                     "before_step@1.0", "after_backward@1.0", "after_step@1.1",
                     "after_epoch@1.1", "save 1.1",  # the schedule ends inside epoch 2
                     "after_train@1.1"]


def test_grad_clip_hook_sees_gradients_before_the_step(tmp_path):
    # _TwoParts has gradients (10, 0.5); per group each is clipped alone: a = 1 - 0.1*1, b = 1 - 0.1*0.5
    model = _TwoParts()
    opt = torch.optim.SGD([{"params": [model.a]}, {"params": [model.b]}], lr=0.1)
    Trainer(model, opt, step_fn=lambda m, batch: m(batch), workdir=tmp_path, iterations=1, batch_size=1,
            device="cpu", hooks=[GradClip(1.0, per_group=True)], progress=False).fit(TensorDataset(torch.zeros(1, 1)))
    assert (model.a.item(), model.b.item()) == pytest.approx((0.9, 0.95), abs=1e-6)
    with pytest.raises(ValueError):
        GradClip(0.0)


def test_epoch_scheduler_is_not_stepped_by_a_cut_epoch(tmp_path):
    model = _Slope()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    # 2 steps per epoch, 3 iterations: one whole epoch at 0.1, then one step at 0.05
    Trainer(model, opt, step_fn=lambda m, b: m(b), workdir=tmp_path, iterations=3, batch_size=1, device="cpu",
            hooks=[LRScheduler(sched, interval="epoch")], progress=False).fit(TensorDataset(torch.zeros(2, 1)))
    assert model.w.item() == pytest.approx(-0.25)
    assert sched.last_epoch == 1 and load_checkpoint(tmp_path / "last.pt")["scheduler"]["last_epoch"] == 1


class _StepCounter(HookBase):
    """A stateful hook: its count is checkpointed under its own key and comes back on resume."""

    state_key = "counter"

    def __init__(self):
        self.count = 0

    def after_step(self, trainer):
        self.count += 1

    def state_dict(self):
        return {"count": self.count}

    def load_state_dict(self, state):
        self.count = state["count"]


def _train_iterations(workdir, iterations, init_seed=0, hooks=(), step_fn=None, **kw):
    model, opt, sched, data = _toy_problem(init_seed)

    def mse(m, batch):
        x, y = batch
        return nn.functional.mse_loss(m(x), y)

    Trainer(model, opt, step_fn=step_fn or mse, workdir=workdir, iterations=iterations, seed=7, batch_size=4,
            device="cpu", progress=False, hooks=[LRScheduler(sched, interval="step"), *hooks], **kw).fit(data)
    return model


def test_kill_and_resume_at_a_mid_epoch_iteration_is_bit_exact(tmp_path):
    # 12 samples, batch 4: 3 steps per epoch; 8 iterations end at step 2 of epoch 3
    full = _train_iterations(tmp_path / "full", 8)
    calls = {"n": 0}

    def crashing(m, batch):
        calls["n"] += 1
        if calls["n"] == 6:  # killed in step 3 of epoch 2, after step 5 was checkpointed
            raise KeyboardInterrupt
        x, y = batch
        return nn.functional.mse_loss(m(x), y)

    counter = _StepCounter()
    with pytest.raises(KeyboardInterrupt):
        _train_iterations(tmp_path / "r", 8, step_fn=crashing, hooks=[counter], checkpoint_every=1)
    state = load_checkpoint(tmp_path / "r" / "last.pt")
    assert (state["epoch"], state["step_in_epoch"], state["step"], state["counter"]) == (1, 2, 5, {"count": 5})
    again = _StepCounter()
    resumed = _train_iterations(tmp_path / "r", 8, init_seed=99, hooks=[again], checkpoint_every=1)
    assert _same(full, resumed)
    assert again.count == 8  # 5 restored + the 3 steps this run made
    # the interrupted epoch is logged once, with the mean over all of its steps
    full_lines, resumed_lines = _epoch_lines(tmp_path / "full"), _epoch_lines(tmp_path / "r")
    assert [l["step"] for l in resumed_lines] == [3, 6, 8]
    assert [l["loss"] for l in resumed_lines] == [l["loss"] for l in full_lines]


def test_a_cut_schedule_extended_later_equals_one_run(tmp_path):
    # 7 iterations stop at step 1 of epoch 3; asking for 8 then continues that epoch where it stopped
    full = _train_iterations(tmp_path / "full", 8)
    _train_iterations(tmp_path / "ext", 7)
    extended = _train_iterations(tmp_path / "ext", 8, init_seed=99)
    assert _same(full, extended)
    lines = _epoch_lines(tmp_path / "ext")
    assert [(l["step"], l.get("partial", False)) for l in lines] == [(3, False), (6, False), (7, True), (8, True)]
    assert lines[-1]["loss"] == _epoch_lines(tmp_path / "full")[-1]["loss"]


def test_a_checkpoint_of_the_trainer_before_hooks_resumes(tmp_path):
    # the keys the flag-based Trainer wrote: the scheduler's and the epoch's running sums at top level
    model = _Slope()
    with torch.no_grad():
        model.w.fill_(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(), sched.step()  # one step done: lr 0.05 (the step itself left w alone: no gradient)
    save_checkpoint(tmp_path / "last.pt", {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "epoch": 0, "step_in_epoch": 1, "step": 1, "rng": [capture_rng_state()],
        "running": {"loss": 3.0, "_count": 1.0, "_seconds": 0.5}, "config": {}, "seed": 0, "world_size": 1})
    fresh = _Slope()
    opt2 = torch.optim.SGD(fresh.parameters(), lr=0.1)
    Trainer(fresh, opt2, step_fn=lambda m, b: m(b), scheduler=torch.optim.lr_scheduler.StepLR(opt2, 1, 0.5),
            scheduler_interval="step", workdir=tmp_path, epochs=1, batch_size=1, shuffle=False, device="cpu",
            progress=False).fit(TensorDataset(torch.zeros(2, 1)))
    # the second step of epoch 1 at lr 0.05 on loss w = 1: w = 0.95; the epoch's loss is mean(3, 1)
    assert fresh.w.item() == pytest.approx(0.95)
    (line,) = _epoch_lines(tmp_path)
    assert (line["step"], line["loss"], line["lr"]) == (2, pytest.approx(2.0), pytest.approx(0.05))
    assert line["seconds"] >= 0.5
    assert load_checkpoint(tmp_path / "last.pt")["scheduler"]["last_epoch"] == 2
