from dataclasses import dataclass, field

import pytest

from wsis.config import load_config, to_dict
from wsis.errors import InputError


@dataclass
class Optim:
    lr: float = 0.01
    momentum: float = 0.9


@dataclass
class Cfg:
    epochs: int = 20
    name: str = "prm"
    flip: bool = True
    size: tuple[float, float] = (0.1, 0.9)
    limit: int | None = None
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("epochs: 5\noptim:\n  lr: 0.1\n")
    cfg = load_config(Cfg, f, ["optim.momentum=0.5", "flip=false", "size=[0.2, 0.8]", "limit=7"])
    assert cfg.epochs == 5 and cfg.optim.lr == 0.1 and cfg.optim.momentum == 0.5
    assert cfg.flip is False and cfg.size == (0.2, 0.8) and cfg.limit == 7 and cfg.name == "prm"
    assert to_dict(cfg)["optim"] == {"lr": 0.1, "momentum": 0.5}


def test_int_promoted_to_float_but_not_the_reverse():
    assert load_config(Cfg, None, ["optim.lr=1"]).optim.lr == 1.0
    with pytest.raises(InputError, match="epochs: expected an integer"):
        load_config(Cfg, None, ["epochs=2.5"])


def test_unknown_key_names_the_file(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(InputError) as e:
        load_config(Cfg, f)
    assert "typo.yaml" in str(e.value) and "optim.lrr" in str(e.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("epochs: [1, 2\n")
    with pytest.raises(InputError, match="bad.yaml: malformed YAML"):
        load_config(Cfg, f)
    with pytest.raises(InputError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="key=value"):
        load_config(Cfg, None, ["epochs"])
