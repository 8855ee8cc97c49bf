"""Usage: score_modules.py WORKDIR MODULE[,MODULE...] [KEY=VALUE ...]. Box AP@0.5 and CorLoc of the
named modules of a finished ``fit`` workdir (fit_short.py's) on its 16 validation scenes (seed 1)
and, as CorLoc is usually measured in weak supervision, on its 16 training scenes (seed 0)."""
import json
import sys
from pathlib import Path

import torch

from wsis.data.synthetic import make_scenes
from wsis.eval.detection import corloc, detection_ap
from wsis.methods import labelpenet

torch.set_num_threads(1)
wd = Path(sys.argv[1])
modules = sys.argv[2].split(",")
p = labelpenet.load(wd, sys.argv[3:])
sets = {"val": make_scenes(wd / "data/val", num_images=16, seed=1, image_size=(128, 128)),
        "train": make_scenes(wd / "data/train", num_images=16, seed=0, image_size=(128, 128))}
res = {}
for name, records in sets.items():
    for m in modules:
        preds = {r.image_id: p.predict(r, module=m) for r in records}
        res[f"{name} / {m}"] = {"box_ap50": round(100 * detection_ap(records, preds, 0.5)["mAP"], 1),
                                "corloc": round(100 * corloc(records, preds)["corloc"], 1)}
        print(name, m, res[f"{name} / {m}"], flush=True)
print(json.dumps(res))
