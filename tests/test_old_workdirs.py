"""Workdirs written before the package refactor (method.json with the old key names) still load,
and a config that cannot be read fails with one line naming the file."""
import json
from pathlib import Path

import pytest

from wsis.errors import InputError
from wsis.methods.trained import read_trained

CONFIGS = Path(__file__).resolve().parents[1] / "wsis" / "configs"


def _write(workdir: Path, method: str, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "method.json").write_text(json.dumps(
        {"method": method, "config": config, "category_ids": [1], "categories": {"1": "a"}}))
    return workdir


def test_old_prm_config_migrates(tmp_path):
    from wsis.methods.prm import PRMMethodConfig, migrate_config

    old = {"backbone": "resnet50", "prm": {"epochs": 7, "peak_threshold": 30.0, "class_threshold": 0.5},
           "peak_threshold": 2.0, "retrieval": {"balance_factor": 0.7, "penalty_factor": 0.01,
                                                "penalty_reference_area": None}}
    _, cfg = read_trained(_write(tmp_path / "run", "prm", old), PRMMethodConfig, migrate_config)
    assert (cfg.schedule.epochs, cfg.test.class_threshold, cfg.test.peak_threshold) == (7, 0.5, 2.0)
    assert (cfg.test.retrieval.alpha, cfg.test.retrieval.gamma, cfg.test.retrieval.gamma_reference_area) == (0.7, 0.01, None)


def test_old_mser_config_merges_sgpo_into_retrieval(tmp_path):
    from wsis.methods.mser_sgpo import MSERSGPOConfig, migrate_mser_config

    old = {"prm": {"epochs": 3}, "stages": 2, "scoring": "sgpo",
           "retrieval": {"balance_factor": 0.8, "nms_threshold": 0.5, "bg_threshold_factor": 0.9},
           "sgpo": {"omega": 0.5, "nms_threshold": 0.3, "saliency": "fine_grained"}}
    _, cfg = read_trained(_write(tmp_path / "run", "mser_sgpo", old), MSERSGPOConfig, migrate_mser_config)
    r = cfg.test.retrieval
    # the run scored with SGPO: its nms_threshold wins; PRM-only keys are kept
    assert (r.omega, r.nms_threshold, r.saliency, r.bg_threshold_factor) == (0.5, 0.3, "fine_grained", 0.9)
    assert cfg.schedule.epochs == 3


def test_old_wise_config_keeps_only_the_classifier(tmp_path):
    from wsis.methods.wise import WiseMethodConfig, migrate_config

    old = {"seed": 1, "prm": {"backbone": "resnet50", "device": "cpu", "prm": {"epochs": 4, "peak_threshold": 30},
                              "retrieval": {"balance_factor": 0.8}, "proposals": {"method": "superpixel"}}}
    _, cfg = read_trained(_write(tmp_path / "run", "wise", old), WiseMethodConfig, migrate_config)
    assert (cfg.prm.model.backbone, cfg.prm.schedule.epochs, cfg.seed) == ("resnet50", 4, 1)


def test_an_unreadable_old_config_fails_with_one_line_naming_the_file(tmp_path):
    from wsis.methods.prm import PRMMethodConfig, migrate_config

    work = _write(tmp_path / "run", "prm", {"no_such_key": 1})
    with pytest.raises(InputError) as e:
        read_trained(work, PRMMethodConfig, migrate_config)
    message = str(e.value)
    assert "method.json" in message and "no_such_key" in message and "\n" not in message


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_packaged_config_loads(path):
    from wsis.config import load_config
    from wsis.methods import METHODS, get_method  # noqa: F401
    from wsis.methods.base import REGISTRY

    # METHOD.yaml, METHOD_VARIANT.yaml (cpu, small: ``--config VARIANT``) or demo_METHOD.yaml
    stem = path.stem.removeprefix("demo_")
    name = next(m for m in sorted(METHODS, key=len, reverse=True) if stem == m or stem.startswith(m + "_"))
    get_method(name)
    load_config(REGISTRY[name].config_class, path.name)  # by package name, from any folder
