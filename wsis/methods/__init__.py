"""Methods: one package per system (``wsis.methods.<name>``), whose entry module has
``fit(records, config, overrides, workdir)`` returning a predictor and ``load(workdir)`` restoring
one (the :class:`~wsis.methods.base.Method` protocol); predictors derive from
:class:`~wsis.methods.base.Predictor` (``predict(record) -> Instances``, ``predict_records``) and are
registered with ``@register(name)``. :data:`METHODS` names the entry modules so that the CLI lists
and validates names without importing torch; modules are imported on demand."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import Sequence

from wsis.errors import InputError

METHODS: dict[str, str] = {
    "prm": "wsis.methods.prm",
    "mser_sgpo": "wsis.methods.mser_sgpo",
    "wise": "wsis.methods.wise",
    "maskrcnn": "wsis.methods.maskrcnn",
    "pdsl": "wsis.methods.pdsl",
    "dasnet": "wsis.methods.dasnet",
    "labelpenet": "wsis.methods.labelpenet",
}


def get_method(name: str) -> ModuleType:
    """The entry module of method ``name``, imported now; it must register a predictor as ``name``."""
    if name not in METHODS:
        raise InputError("command line", f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    module = importlib.import_module(METHODS[name])
    from wsis.methods.base import REGISTRY

    if name not in REGISTRY or not REGISTRY[name].__module__.startswith(METHODS[name]):
        raise RuntimeError(f"{METHODS[name]} registers no predictor as {name!r} (wsis.methods.base.register)")
    return module


def read_meta(workdir: str | Path) -> dict:
    """The ``method.json`` a finished training run leaves in its workdir."""
    path = Path(workdir) / "method.json"
    if not path.is_file():
        raise InputError(workdir, "not a trained workdir (method.json missing; did training finish?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(path, f"malformed JSON: {e}") from None
    if not isinstance(meta, dict) or "method" not in meta:
        raise InputError(path, "malformed method file (no 'method' entry)")
    return meta


def load_trained(workdir: str | Path, overrides: Sequence[str] = ()):
    """The predictor saved in a training workdir, whatever its method, with ``key=value`` overrides of
    its inference settings; a training setting is refused, naming the keys that may be changed."""
    name = read_meta(workdir)["method"]
    if name not in METHODS:
        raise InputError(Path(workdir) / "method.json", f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    module = get_method(name)
    if overrides:
        from wsis.config import check_moved_keys, override_keys
        from wsis.methods.base import REGISTRY

        allowed = REGISTRY[name].inference_keys
        check_moved_keys(getattr(REGISTRY[name], "config_class", object), override_keys(list(overrides)), "command line")
        for key in override_keys(list(overrides)):
            if not any(key == k or key.startswith(k + ".") for k in allowed):
                raise InputError("command line", f"'{key}' is not an inference setting of {name}; predict takes "
                                                 f"{', '.join(allowed)} (retrain to change how the model is trained)")
    return module.load(workdir, overrides=overrides)
