"""Control: the detection module trained on the training scenes' true boxes (weights ``w``) in place of
the classification module's calibrated candidates, same schedule as the ladder; scored on val.

    python benchmarks/labelpenet_diagnosis/true_box_control.py WORKDIR W ITERATIONS [KEY=VALUE ...]

The classification module is not trained (0 iterations): its stored outputs are replaced by the true
boxes and masks before ``fit`` starts, so the detection module sees nothing else. Extra overrides
apply to ``demo_labelpenet.yaml``."""
import json
import sys
from pathlib import Path

import numpy as np
import torch

from wsis import masks as mask_ops
from wsis.data.synthetic import make_scenes
from wsis.eval.detection import corloc, detection_ap
from wsis.methods import labelpenet
from wsis.methods.labelpenet.calibration import Candidates
from wsis.methods.labelpenet.data import SupervisionStore

torch.set_num_threads(1)
wd = Path(sys.argv[1])
w = float(sys.argv[2])
it = int(sys.argv[3])
extra = sys.argv[4:]
train = make_scenes(wd / "data/train", num_images=16, seed=0, image_size=(128, 128))
val = make_scenes(wd / "data/val", num_images=16, seed=1, image_size=(128, 128))
cat = sorted(train.categories)
store = SupervisionStore(wd / "classification/outputs")
for r in train:
    g = r.gt
    m = g.masks if isinstance(g.masks, np.ndarray) else mask_ops.decode_many(g.masks, (r.height, r.width))
    lab = np.array([cat.index(int(c)) for c in g.labels], np.int64)
    store.save(r.image_id, Candidates(np.asarray(m, bool), np.asarray(g.boxes, np.float32).reshape(-1, 4), lab,
                                      np.full(len(lab), w, np.float32)))
ov = ["schedule.classification.iterations=0",
      f"schedule.detection.iterations={it}", f"schedule.detection.lr_steps=[{int(it * 0.8)}]",
      "schedule.refinement.iterations=0", "schedule.segmentation.iterations=0",
      "schedule.forward_backward.iterations=0", *extra]
p = labelpenet.fit(train, "wsis/configs/demo_labelpenet.yaml", ov, wd)
preds = {r.image_id: p.predict(r, module="detection") for r in val}
print(json.dumps({"weight": w, "iterations": it, "overrides": extra,
                  "box_ap50": detection_ap(val, preds, 0.5)["mAP"], "corloc": corloc(val, preds)["corloc"],
                  "dets_per_image": float(np.mean([len(v) for v in preds.values()]))}))
