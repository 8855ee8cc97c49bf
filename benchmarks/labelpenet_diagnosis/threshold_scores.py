"""Usage: threshold_scores.py WORKDIR MODULE train|val|coco [SNAPSHOT]. Box AP@0.5, CorLoc, detections per
image and the top detection score per image (median and highest) of module MODULE of a finished fit
workdir on its 16 training scenes (seed 0; CorLoc's usual set in weak supervision, and where schedules
are chosen), its 16 validation scenes (seed 1) or, for a run on the coco protocol, coco-val50, at test.score_threshold 0.05 (the config's), 0.01 and 0.0 (diagnosis only: is the
module silent because its scores stay under the threshold?). SNAPSHOT: a Trainer ``last.pt`` of
the whole net to score instead of the finished weights. THRESHOLDS=0.05 (environment) scores one threshold only."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from wsis.data.synthetic import make_scenes
from wsis.engine.checkpoint import load_checkpoint
from wsis.eval.detection import corloc, detection_ap
from wsis.methods import labelpenet

torch.set_num_threads(1)
wd, module = Path(sys.argv[1]), sys.argv[2]
split = sys.argv[3]
if split == "coco":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from common import VAL_JSON

    from wsis.data import load_dataset

    val = load_dataset(VAL_JSON)
else:
    val = make_scenes(wd / f"data/{split}", num_images=16, seed={"train": 0, "val": 1}[split], image_size=(128, 128))
res = {"module": module, "split": split}
for thr in [float(t) for t in os.environ.get("THRESHOLDS", "0.05,0.01,0.0").split(",")]:
    p = labelpenet.load(wd, [f"test.score_threshold={thr}"])
    if len(sys.argv) > 4:
        res["snapshot"] = sys.argv[4]
        p.net.load_state_dict(load_checkpoint(sys.argv[4])["model"])
    preds = {r.image_id: p.predict(r, module=module) for r in val}
    res[str(thr)] = {"box_ap50": round(100 * detection_ap(val, preds, 0.5)["mAP"], 1),
                     "corloc": round(100 * corloc(val, preds)["corloc"], 1),
                     "dets_per_image": float(np.mean([len(v) for v in preds.values()])),
                     "top_score_median": float(np.median([v.scores.max() if len(v) else 0.0 for v in preds.values()])),
                     "top_score_max": float(max((v.scores.max() for v in preds.values() if len(v)), default=0.0))}
    print(thr, res[str(thr)], flush=True)
print(json.dumps(res))
