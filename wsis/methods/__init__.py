"""Methods: one module per system, each with ``fit(records, config, overrides, workdir)`` returning a
predictor and ``load(workdir)`` restoring one; predictors have ``predict(record) -> Instances`` and
``predict_records(records) -> {image_id: Instances}``. Modules are imported on demand so that the
CLI starts fast and a method's heavy dependencies load only when it runs."""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

from wsis.errors import InputError

METHODS: dict[str, str] = {
    "prm": "wsis.methods.prm",
    "mser_sgpo": "wsis.methods.mser_sgpo",
    "wise": "wsis.methods.wise",
    "maskrcnn": "wsis.methods.maskrcnn",
    "pdsl": "wsis.methods.pdsl",
    "dasnet": "wsis.methods.dasnet",
}


def get_method(name: str) -> ModuleType:
    if name not in METHODS:
        raise InputError("command line", f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")
    return importlib.import_module(METHODS[name])


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


def load_trained(workdir: str | Path):
    """The predictor saved in a training workdir, whatever its method."""
    return get_method(read_meta(workdir)["method"]).load(workdir)
