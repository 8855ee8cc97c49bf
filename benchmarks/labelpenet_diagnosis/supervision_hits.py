"""Usage: supervision_hits.py WORKDIR MODULE [N_TRAIN]. What module MODULE of a fit workdir
(fit_short.py's or bench_labelpenet.py's) hands on to the next one: its stored calibrated instances
(S, B/T, W in ``WORKDIR/MODULE/outputs``) on the training scenes (seed 0), against the ground truth
(read here only to diagnose; training never sees it): instances per image, how many hit an object of
their class (box IoU >= 0.5), the mask IoU with the best object of their class, the weights of hits
and misses, and how many masks are exactly their box (the calibration's empty-mask fallback)."""
import json
import sys
from pathlib import Path

import numpy as np

from wsis.data.synthetic import make_scenes
from wsis.eval.diagnosis import candidate_overlaps
from wsis.methods.labelpenet.data import SupervisionStore

wd, module = Path(sys.argv[1]), sys.argv[2]
n_train = int(sys.argv[3]) if len(sys.argv) > 3 else 16
train = make_scenes(wd / "data/train", num_images=n_train, seed=0, image_size=(128, 128))
cat = sorted(train.categories)
store = SupervisionStore(wd / module / "outputs")
rows = []
objects = 0
for r in train:
    c = store.load(r.image_id)
    objects += len(r.gt.labels)
    class_ids = [cat[k] for k in c.labels]
    box_ious, mask_ious = candidate_overlaps(r, c.boxes, c.masks, class_ids)
    for k in range(len(c)):
        m = c.masks[k]
        x0, y0, x1, y1 = np.round(c.boxes[k]).astype(int)
        box_pixels = max(x1 - x0, 0) * max(y1 - y0, 0)
        rows.append({"image": r.image_id, "hit": bool(box_ious[k] >= 0.5), "box_iou": float(box_ious[k]),
                     "mask_iou": float(mask_ious[k]), "weight": float(c.weights[k]), "area": int(m.sum()),
                     "mask_is_box": int(m.sum()) == box_pixels, "tagged": bool(class_ids[k] in r.gt.labels)})
hits = [x for x in rows if x["hit"]]
miss = [x for x in rows if not x["hit"]]
res = {"module": module, "images": len(train), "objects": objects, "instances": len(rows),
       "per_image": len(rows) / len(train), "hits_box_iou_0.5": len(hits),
       "mask_iou_0.5": int(sum(x["mask_iou"] >= 0.5 for x in rows)),
       "mean_box_iou": float(np.mean([x["box_iou"] for x in rows])) if rows else 0.0,
       "mean_mask_iou": float(np.mean([x["mask_iou"] for x in rows])) if rows else 0.0,
       "mean_weight": float(np.mean([x["weight"] for x in rows])) if rows else 0.0,
       "weight_quartiles": np.percentile([x["weight"] for x in rows], [0, 25, 50, 75, 100]).round(3).tolist() if rows else [],
       "mean_weight_hits": float(np.mean([x["weight"] for x in hits])) if hits else None,
       "mean_weight_misses": float(np.mean([x["weight"] for x in miss])) if miss else None,
       "masks_equal_to_box": int(sum(x["mask_is_box"] for x in rows)),
       "images_without_instances": int(sum(len(store.load(r.image_id)) == 0 for r in train))}
print(json.dumps(res))
