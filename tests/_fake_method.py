"""A stand-in for a trained method, for CLI tests of what happens around prediction (ids, classes,
subsets): ``load`` reads the classes from the workdir's ``method.json`` and the predictor outputs,
per image, the top half of the image as one instance of model class ``ids[image_id % K]``, score
0.9 (0.5 for image ids of 13 and above)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wsis import masks as mask_ops
from wsis.structures import Instances


class FakePredictor:
    inference_keys = ("device", "test")

    def __init__(self, categories: dict[int, str], overrides=()) -> None:
        self.categories = categories
        self.overrides = list(overrides)

    def predict_records(self, records, progress: bool = True) -> dict[int, Instances]:
        ids = sorted(self.categories)
        out = {}
        for r in records:
            m = np.zeros(r.size, bool)
            m[: r.height // 2] = True
            score = 0.9 if r.image_id < 13 else 0.5
            out[r.image_id] = Instances(r.size, np.array([[0, 0, r.width, r.height // 2]], np.float32),
                                        [ids[r.image_id % len(ids)]], [score], [mask_ops.encode(m)])
        return out


def load(workdir, overrides=()):
    meta = json.loads((Path(workdir) / "method.json").read_text())
    return FakePredictor({int(k): v for k, v in meta["categories"].items()}, overrides)


def write_workdir(workdir: Path, categories: dict[int, str]) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {"method": "fake", "category_ids": sorted(categories),
            "categories": {str(k): v for k, v in categories.items()}}
    (workdir / "method.json").write_text(json.dumps(meta))
    return workdir
