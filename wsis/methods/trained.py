"""What a finished training run leaves in its workdir -- ``model.pt`` (the weights) and
``method.json`` (method, config, classes, training time) -- written and read the same way by every
method."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from wsis.config import from_dict, with_overrides, migrate_moved_keys
from wsis.data.images import atomic_write
from wsis.engine.checkpoint import load_checkpoint, save_checkpoint
from wsis.engine.distributed import is_main
from wsis.errors import InputError
from wsis.methods import read_meta

MODEL_FILE = "model.pt"
META_FILE = "method.json"

C = TypeVar("C")


def save_weights(path: Path, model: torch.nn.Module) -> None:
    """``model``'s weights at ``path`` (a stage of a multi-model method), written by the main process."""
    if is_main():
        save_checkpoint(path, {"model": model.state_dict()})


def save_trained(workdir: Path, model: torch.nn.Module | None, meta: dict[str, Any], started: float) -> None:
    """Weights (``model.pt``; none when ``model`` is None: a method whose weights are saved per stage
    with :func:`save_weights`) and ``meta`` (plus ``train_seconds``: wall time since ``started``,
    summed over the resumed runs of this workdir; a finished run fitted again adds ~0), written by the
    main process. This is the only writer of ``method.json``."""
    previous = workdir / META_FILE
    before = json.loads(previous.read_text()).get("train_seconds", 0.0) if previous.is_file() else 0.0
    meta["train_seconds"] = before + time.perf_counter() - started
    if is_main():
        if model is not None:
            save_checkpoint(workdir / MODEL_FILE, {"model": model.state_dict()})
        with atomic_write(previous) as f:
            json.dump(meta, f, indent=2)


def read_trained(workdir: str | Path, config_cls: type[C],
                 migrate: Callable[[dict], dict] | None = None, overrides: Sequence[str] = ()) -> tuple[dict[str, Any], C]:
    """``method.json`` of a finished run and its config as ``config_cls``; ``migrate`` rewrites a
    config saved with older key names (a key it does not know is an error naming the file);
    ``overrides`` (``key=value``, checked by :func:`wsis.methods.load_trained`) are applied on top."""
    meta = read_meta(workdir)
    config = meta.get("config")
    source = str(Path(workdir) / META_FILE)
    if not isinstance(config, dict):
        raise InputError(source, "malformed method file (no 'config' mapping)")
    config = migrate_moved_keys(config_cls, migrate(config) if migrate else config)
    cfg = from_dict(config_cls, config, source)
    return meta, with_overrides(cfg, list(overrides))


def load_weights(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """``model`` with the weights saved at ``path``; a checkpoint of another model is a clear error."""
    try:
        model.load_state_dict(load_checkpoint(path)["model"])
    except (KeyError, RuntimeError) as e:
        raise InputError(path, f"checkpoint does not fit the configured model: {str(e)[:200]}") from None
    return model


def trained_categories(meta: dict[str, Any]) -> tuple[list[int], dict[int, str]]:
    """The model's category ids (in output-channel order) and id -> name map from ``method.json``,
    whose JSON keys are strings."""
    return [int(c) for c in meta["category_ids"]], {int(k): v for k, v in meta["categories"].items()}
