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


def test_base_files_merge_under_the_file_and_into_sections(tmp_path):
    from dataclasses import dataclass, field

    from wsis.config import load_config

    @dataclass
    class Sched:
        lr: float = 1.0
        steps: int = 10

    @dataclass
    class Sub:
        size: int = 1
        name: str = "a"

    @dataclass
    class Cfg:
        seed: int = 0
        schedule: Sched = field(default_factory=Sched)
        sub: Sub = field(default_factory=Sub)

    (tmp_path / "base.yaml").write_text("seed: 3\nschedule:\n  lr: 0.5\n  steps: 7\n")
    (tmp_path / "sub.yaml").write_text("size: 9\nname: b\n")
    (tmp_path / "top.yaml").write_text("_base_: base.yaml\nschedule:\n  steps: 8\nsub:\n  _base_: sub.yaml\n  name: c\n")
    cfg = load_config(Cfg, tmp_path / "top.yaml")
    # base's seed and lr, the file's own steps; the section takes sub.yaml's size and its own name
    assert (cfg.seed, cfg.schedule.lr, cfg.schedule.steps, cfg.sub.size, cfg.sub.name) == (3, 0.5, 8, 9, "c")


def test_base_errors_name_the_file(tmp_path):
    import pytest

    from wsis.config import load_config
    from wsis.errors import InputError

    from dataclasses import dataclass

    @dataclass
    class Cfg:
        seed: int = 0

    (tmp_path / "a.yaml").write_text("_base_: missing.yaml\n")
    with pytest.raises(InputError, match="a.yaml.*_base_ file 'missing.yaml' not found"):
        load_config(Cfg, tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("_base_: c.yaml\n")
    (tmp_path / "c.yaml").write_text("_base_: b.yaml\n")
    with pytest.raises(InputError, match="includes itself"):
        load_config(Cfg, tmp_path / "b.yaml")


def test_config_by_package_name(tmp_path, monkeypatch):
    from wsis.config import resolve_config

    monkeypatch.chdir(tmp_path)
    assert resolve_config("prm_cpu.yaml").parent.name == "configs"
