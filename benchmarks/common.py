"""What every benchmark script shares: where the repository and ../shared/data are, the
BENCHMARK.md train/val arguments, and the provenance recorded with each result."""
from __future__ import annotations

import argparse
import resource
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TRAIN_JSON = DATA / "coco128/annotations/instances_train2017.json"
VAL_JSON = DATA / "coco-val50/annotations/instances_val2017.json"


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--train`` (coco128) and ``--val`` (coco-val50), the protocol's defaults."""
    parser.add_argument("--train", type=Path, default=TRAIN_JSON)
    parser.add_argument("--val", type=Path, default=VAL_JSON)


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
