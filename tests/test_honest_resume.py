"""Issue #14 finding 5: a resumed run says what it resumes from, and refuses settings that differ
from the checkpoint's (naming them) instead of continuing another run under new settings; the
train start line gives the step count and a time estimate from the first steps."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from wsis.engine import Trainer
from wsis.errors import InputError

CONFIG = {"method": "prm", "config": {"classifier": {"image_size": 448, "batch_size": 16}, "num_workers": 0,
                                      "device": "auto"}}


def _train(workdir, config, epochs=1):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    data = TensorDataset(torch.randn(8, 3), torch.randn(8, 2))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn=nn.functional.mse_loss,
                      workdir=workdir, epochs=epochs, device="cpu", batch_size=2, config=config)
    return trainer.fit(data)


def test_changed_settings_are_named():
    from wsis.engine.trainer import changed_settings

    new = {"method": "prm", "config": {"classifier": {"image_size": 224, "batch_size": 4}, "num_workers": 2,
                                       "device": "cpu"}}
    assert changed_settings(CONFIG, new) == ["config.classifier.batch_size: 16 -> 4",
                                             "config.classifier.image_size: 448 -> 224"]
    assert changed_settings(CONFIG, {**CONFIG, "extra": 1}) == ["extra: (unset) -> 1"]
    longer = {**CONFIG, "config": {**CONFIG["config"], "classifier": {**CONFIG["config"]["classifier"], "epochs": 9}}}
    assert changed_settings(CONFIG, longer) == []  # the schedule's length may change (the resume line shows the new total)


def test_resume_with_other_settings_is_an_error_naming_them(tmp_path):
    _train(tmp_path, CONFIG)
    changed = {"method": "prm", "config": {"classifier": {"image_size": 224, "batch_size": 16}, "num_workers": 0,
                                           "device": "auto"}}
    with pytest.raises(InputError, match=r"last.pt: this run was started with other settings "
                                         r"\(config.classifier.image_size: 448 -> 224\).*--restart"):
        _train(tmp_path, changed, epochs=2)


def test_resume_says_where_it_starts_and_ignores_workers(tmp_path, capsys):
    _train(tmp_path, CONFIG)
    out = capsys.readouterr().out
    assert "training on cpu: 8 samples, batch 2, 4 steps per epoch x 1 epochs = 4 steps" in out
    assert "s per step over the first 3: about" in out and "for the 1 steps left" in out
    _train(tmp_path, {**CONFIG, "config": {**CONFIG["config"], "num_workers": 3}}, epochs=1)
    out = capsys.readouterr().out
    assert f"resuming from {tmp_path / 'last.pt'}: all 1 epochs were done already" in out
    _train(tmp_path, CONFIG, epochs=3)  # a longer schedule of the same settings (epochs are not in this config)
    assert "1 of 3 epochs and 0 steps of the next done (step 4)" in capsys.readouterr().out


def test_a_run_of_the_layout_before_the_skeleton_is_refused_clearly(tmp_path):
    _train(tmp_path, CONFIG)  # "classifier" section: the layout before model / data / schedule / test
    skeleton = {"method": "prm", "config": {"data": {"image_size": 448}, "schedule": {"batch_size": 16},
                                            "num_workers": 0, "device": "auto"}}
    with pytest.raises(InputError, match=r"last.pt: this run was started with an earlier config layout \(sections "
                                         r"classifier, device, num_workers\).*--restart"):
        _train(tmp_path, skeleton, epochs=2)
