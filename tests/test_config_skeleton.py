"""Every method's config has the one skeleton (model / data / schedule / proposals / test), a
schedule's length is stated once (iterations or epochs), keys of the layout before the skeleton are
errors naming their new place, and saved configs of that layout migrate."""
import dataclasses
import json
import typing

import pytest
import torch

from wsis.config import load_config, migrate_moved_keys
from wsis.engine.schedule import ScheduleConfig, schedule_length, total_iterations
from wsis.errors import InputError
from wsis.methods import METHODS, get_method

torch.set_num_threads(1)

RUN_SCALARS = {"device", "seed", "num_workers"}
USES_PROPOSALS = {"prm", "mser_sgpo", "maskrcnn", "wise", "pdsl"}  # DASNet trains on boxes and masks only


def _config_class(name: str) -> type:
    from wsis.methods.base import REGISTRY

    get_method(name)
    return REGISTRY[name].config_class


def _sections(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _schedules(tp: typing.Any) -> list[type]:
    """The ScheduleConfig classes of a ``schedule`` section: itself, or one per stage under it."""
    if issubclass(tp, ScheduleConfig):
        return [tp]
    return [t for t in _sections(tp).values() if dataclasses.is_dataclass(t) and issubclass(t, ScheduleConfig)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_the_skeleton(name):
    fields = _sections(_config_class(name))
    required = {"model", "data", "schedule", "test"} | ({"proposals"} if name in USES_PROPOSALS else set())
    assert required <= set(fields), f"{name}: missing {sorted(required - set(fields))}"
    for key, tp in fields.items():  # besides the run's scalars everything is a section
        assert key in RUN_SCALARS or dataclasses.is_dataclass(tp), f"{name}: top-level key '{key}' is not a section"
    assert _schedules(fields["schedule"]), f"{name}: schedule holds no ScheduleConfig"


def test_a_schedule_states_its_length_once():
    assert schedule_length(ScheduleConfig(iterations=7)) == {"iterations": 7}
    assert schedule_length(ScheduleConfig(iterations=None, epochs=3)) == {"epochs": 3}
    with pytest.raises(InputError, match=r"schedule.detection: give the length once.*detection.epochs=null"):
        schedule_length(ScheduleConfig(iterations=5, epochs=3), "schedule.detection")
    with pytest.raises(InputError, match="give the length once"):
        schedule_length(ScheduleConfig(iterations=None, epochs=None))
    with pytest.raises(InputError, match=">= 0"):
        schedule_length(ScheduleConfig(iterations=-1))
    # 3 epochs of 4 batches are 12 iterations; an iteration count is taken as it is
    assert total_iterations(ScheduleConfig(iterations=None, epochs=3), 4) == 12
    assert total_iterations(ScheduleConfig(iterations=10), 4) == 10


@pytest.mark.parametrize("name, old, new", [
    ("prm", "classifier.epochs", "schedule.epochs"),
    ("prm", "classifier.class_threshold", "test.class_threshold"),
    ("prm", "peak_threshold", "test.peak_threshold"),
    ("prm", "retrieval.alpha", "test.retrieval.alpha"),
    ("prm", "fit.head_epochs", "schedule.epochs"),
    ("prm", "backbone", "model.backbone"),
    ("mser_sgpo", "stages", "erasing.stages"),
    ("mser_sgpo", "scoring", "test.scoring"),
    ("maskrcnn", "detector.min_size", "data.min_size"),
    ("maskrcnn", "detector.score_threshold", "test.score_threshold"),
    ("maskrcnn", "detector.anchor_sizes", "model.anchor_sizes"),
    ("wise", "refine", "test.refine"),
    ("wise", "prm.classifier.epochs", "prm.schedule.epochs"),
    ("pdsl", "augment.crop", "data.crop"),
    ("dasnet", "detector.kind", "model.detector.kind"),
    ("dasnet", "detector.score_threshold", "test.candidate_score_threshold"),
    ("dasnet", "masks_for", "data.masks_for"),
])
def test_an_old_key_names_its_new_place(name, old, new):
    with pytest.raises(InputError, match=f"command line: config key '{old}' is now '{new}'"):
        load_config(_config_class(name), overrides=[f"{old}=1"])


def test_an_old_key_in_a_yaml_file_names_the_file(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("classifier:\n  image_size: 224\n")
    with pytest.raises(InputError, match=r"old.yaml: config key 'classifier.image_size' is now 'data.image_size'"):
        load_config(_config_class("prm"), path)


def test_a_key_that_never_existed_is_still_unknown():
    with pytest.raises(InputError, match="unknown config key 'schedule.epoch'"):
        load_config(_config_class("prm"), overrides=["schedule.epoch=3"])


def test_old_saved_configs_migrate_to_the_skeleton():
    from wsis.methods.prm import migrate_config

    old = {"backbone": "resnet50", "pretrained": False, "seed": 3,
           "classifier": {"image_size": 320, "epochs": 7, "lr": 0.02, "class_threshold": 0.5},
           "peak_threshold": 2.0, "retrieval": {"alpha": 0.7},
           "fit": {"frozen_backbone": False, "head_epochs": 99, "thresholds": "fixed"}}
    new = migrate_moved_keys(_config_class("prm"), migrate_config(old))
    assert new == {"seed": 3, "model": {"backbone": "resnet50", "pretrained": False, "frozen_backbone": False},
                   "data": {"image_size": 320}, "schedule": {"epochs": 7, "lr": 0.02},
                   "test": {"class_threshold": 0.5, "peak_threshold": 2.0, "retrieval": {"alpha": 0.7}},
                   "calibration": {"thresholds": "fixed"}}
    # with a frozen backbone the class layer's schedule was the one trained
    frozen = {**old, "fit": {"frozen_backbone": True, "head_epochs": 99, "head_lr": 0.5}}
    new = migrate_moved_keys(_config_class("prm"), migrate_config(frozen))
    assert new["schedule"] == {"epochs": 99, "lr": 0.5}
    # keys already in the new layout stay where they are
    assert migrate_moved_keys(_config_class("prm"), {"schedule": {"epochs": 4}}) == {"schedule": {"epochs": 4}}


def test_old_maskrcnn_config_migrates_section_by_section():
    old = {"detector": {"backbone": "lite0_fpn", "min_size": 320, "score_threshold": 0.2}, "refine": True,
           "augment": {"hflip": False}, "schedule": {"iterations": 10}}
    assert migrate_moved_keys(_config_class("maskrcnn"), old) == {
        "model": {"backbone": "lite0_fpn"}, "data": {"min_size": 320, "hflip": False},
        "test": {"score_threshold": 0.2, "refine": True}, "schedule": {"iterations": 10}}


def test_an_old_prm_workdir_loads(tmp_path):
    """A run saved with the layout before the skeleton predicts with the values it was trained with."""
    import time

    from wsis.methods import load_trained
    from wsis.methods.prm import PRMMethodConfig, build_model
    from wsis.methods.trained import save_trained

    model = build_model(PRMMethodConfig().model, 2, pretrained=False)
    old = {"backbone": "tf_efficientnet_lite0", "pretrained": False, "device": "cpu",
           "classifier": {"image_size": 96, "class_threshold": 0.25}, "max_peaks_per_class": 3}
    (tmp_path / "run").mkdir()
    save_trained(tmp_path / "run", model, {"method": "prm", "config": old, "category_ids": [1, 2],
                                           "categories": {"1": "a", "2": "b"}}, time.perf_counter())
    predictor = load_trained(tmp_path / "run")
    assert (predictor.cfg.data.image_size, predictor.cfg.test.class_threshold) == (96, 0.25)
    assert predictor.cfg.test.max_peaks_per_class == 3
    with pytest.raises(InputError, match="'classifier.class_threshold' is now 'test.class_threshold'"):
        load_trained(tmp_path / "run", ["classifier.class_threshold=0"])
    assert json.loads((tmp_path / "run" / "method.json").read_text())["config"] == old  # read, not rewritten
