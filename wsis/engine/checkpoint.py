"""Training checkpoints: atomic writes, safe loads, and random-number-generator states as tensors.

Checkpoints are read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled objects;
so everything stored must be tensors, numbers, strings, None and lists/tuples/dicts of them. In
particular RNG states are converted to tensors by :func:`capture_rng_state`, and configs must be
plain dicts (``dataclasses.asdict``).
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsis.errors import InputError


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a killed process leaves the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; InputError if missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, garbage bytes, or a pickled object weights_only refuses
        raise InputError(path, f"corrupt or unsafe checkpoint ({type(e).__name__}: "
                               f"{str(e).splitlines()[0][:200] if str(e) else 'no detail'})") from e
    if not isinstance(state, dict):
        raise InputError(path, f"not a checkpoint: holds a {type(state).__name__}, expected a dict")
    return state


def capture_rng_state() -> dict[str, torch.Tensor]:
    """The python, numpy, torch (and CUDA) generator states, as tensors only."""
    version, mt, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": torch.tensor(version, dtype=torch.int64),
        "python_mt": torch.tensor(mt, dtype=torch.int64),
        # NaN encodes "no cached gaussian" (None).
        "python_gauss": torch.tensor(float("nan") if gauss is None else gauss, dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": torch.tensor(np_pos, dtype=torch.int64),
        "numpy_has_gauss": torch.tensor(np_has_gauss, dtype=torch.int64),
        "numpy_gauss": torch.tensor(np_gauss, dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    gauss = float(state["python_gauss"])
    random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python_mt"].tolist()),
                     None if np.isnan(gauss) else gauss))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"].cpu())
        if len(saved) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(saved)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (``(seed, epoch)`` and ``(seed, epoch, 1)`` give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
