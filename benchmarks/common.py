"""What every benchmark script shares: where the repository and ../shared/data are, the
BENCHMARK.md train/val arguments, and the provenance recorded with each result."""
from __future__ import annotations

import argparse
import platform
import resource
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN_JSON = DATA / "coco128/annotations/instances_train2017.json"
VAL_JSON = DATA / "coco-val50/annotations/instances_val2017.json"
TRAIN83_JSON = DATA / "coco-train83/annotations/instances_train83.json"


def load_train_set(extra: bool = True):
    """The protocol's training set: coco128 + coco-train83 (211 images; BENCHMARK.md since 2026-12-02),
    or coco128 alone with ``extra=False``. Category tables are the same 80 COCO classes."""
    from wsis.data import load_dataset
    from wsis.structures import RecordSet

    first = load_dataset(TRAIN_JSON)
    if not extra:
        return first
    second = load_dataset(TRAIN83_JSON)
    clash = {r.image_id for r in first} & {r.image_id for r in second}
    if clash:
        raise ValueError(f"coco128 and coco-train83 share image ids {sorted(clash)[:5]}")
    return RecordSet(list(first.records) + list(second.records), {**first.categories, **second.categories},
                     "coco128+coco-train83")


def add_data_args(parser: argparse.ArgumentParser, train_set: bool = False) -> None:
    """``--train`` (coco128) and ``--val`` (coco-val50), the protocol's defaults; with ``train_set``
    also ``--coco128-only`` for :func:`training_records`."""
    parser.add_argument("--train", type=Path, default=TRAIN_JSON)
    parser.add_argument("--val", type=Path, default=VAL_JSON)
    if train_set:
        parser.add_argument("--coco128-only", action="store_true",
                            help="train on coco128 alone (the rows before 2026-12-02)")


def training_records(args: argparse.Namespace):
    """The protocol's training set (coco128 + coco-train83), coco128 alone with ``--coco128-only``,
    or the dataset a ``--train`` other than the default names."""
    from wsis.data import load_dataset

    if Path(args.train) != TRAIN_JSON:
        return load_dataset(args.train)
    return load_train_set(extra=not args.coco128_only)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine() -> dict:
    """Where a result was measured: torch's thread count, the platform, CUDA and torch versions."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "torch": torch.__version__}


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal for the tables; '-' where undefined."""
    return "-" if x is None else f"{100 * x:.1f}"


def upsert_row(out: Path, name: str, row: dict, render) -> str:
    """Add or replace row ``name`` in ``out``.json (name -> row), then rewrite ``out``.md as
    ``render(rows, out)`` -- both atomically; returns the Markdown (a diagnosis table's one writer)."""
    import json

    from wsis.data.images import atomic_write

    path = out.with_suffix(".json")
    rows = json.loads(path.read_text()) if path.is_file() else {}
    rows[name] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        json.dump(rows, f, indent=2)
    text = render(rows, out)
    with atomic_write(out.with_suffix(".md")) as f:
        f.write(text)
    return text
