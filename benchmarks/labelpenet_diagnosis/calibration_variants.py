"""Usage: calibration_variants.py WORKDIR [N_TRAIN [KEY=VALUE ...]]. The classification module of WORKDIR (a
``fit`` workdir on the 16 synthetic training scenes, seed 0) labels its training scenes with several
variants of proposal calibration; for each, how many of the boxes B^1 hit an object of their class
(IoU >= 0.5) and their mean size relative to the object they overlap most. Diagnosis only: choices
are made on the training scenes, never on the validation scenes."""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou

from wsis.config import load_config
from wsis.cues.crf import dense_crf
from wsis.data.images import load_image
from wsis.data.synthetic import make_scenes
from wsis.methods.labelpenet import calibration as cal
from wsis.methods.labelpenet.config import LabelPENetConfig
from wsis.methods.labelpenet.inference import _scaled, classification_view
from wsis.methods.labelpenet.model import LabelPENet
from wsis.methods.trained import load_weights

torch.set_num_threads(1)
wd = Path(sys.argv[1])
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 16
MIN_SIDE = float(__import__("os").environ.get("MIN_SIDE", "0"))  # proposals with a shorter side dropped (image px)
train = make_scenes(wd / "data/train", num_images=n_train, seed=0, image_size=(128, 128))
cat = sorted(train.categories)
cfg = load_config(LabelPENetConfig, "wsis/configs/demo_labelpenet.yaml", sys.argv[3:])
net = LabelPENet(cfg.model, len(cat))
load_weights(net.classification, wd / "classification/model.pt")
net.eval()
cache = cfg.proposals.cache(wd)


def variant(small, v, tags, nms_iou=0.5, confident="product", fallback=0.0, box="mask", pick="score", bg_from_conf=False):
    h, w = small.shape[:2]
    boxes, scores, classes, maps = v["boxes"], v["scores"], v["classes"], v["maps"]
    groups = cal.instance_groups(boxes, scores, classes, tags, nms_iou, 1, 0.5)
    if pick == "x1":
        groups = cal.instance_groups(boxes, v["x1"], classes, tags, nms_iou, 1, 0.5)
    if not groups:
        return np.zeros((0, 4)), np.zeros(0, int)
    att = np.stack([cal.instance_attention(maps, boxes, g, h, w) for g in groups])
    heat = {c: cal.heat_map(boxes[classes == c], scores[classes == c], h, w) for c in {g.label for g in groups}}
    conf = np.stack([att[k] * heat[g.label] for k, g in enumerate(groups)])
    if confident == "unit":
        conf = np.stack([cal._unit(x) for x in conf])
    elif confident == "attention":
        conf = att
    elif confident == "heat":
        conf = np.stack([heat[g.label] for g in groups])
    elif confident == "mean":
        conf = np.stack([0.5 * (att[k] + heat[g.label]) for k, g in enumerate(groups)])
    bg = np.maximum(0, 1 - conf.sum(0)) if bg_from_conf else cal.background_map(att)
    labels = dense_crf(small, np.concatenate([bg[None], conf]), cfg.crf)
    out = []
    for k, g in enumerate(groups):
        rc = boxes[g.top]
        m = labels == k + 1
        rc_area = (rc[2] - rc[0]) * (rc[3] - rc[1])
        if box == "rc" or m.sum() <= fallback * rc_area:
            out.append(rc)
        else:
            out.append(cal.box_of(m))
    return np.stack(out), np.array([g.label for g in groups])


views = []
for r in train:
    img = load_image(r.path)
    small, x, scale = _scaled(cfg, img, cfg.calibration.test_size, torch.device("cpu"))
    pb = cfg.proposals.get(cache, r.path).boxes
    pb = pb[np.minimum(pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]) >= MIN_SIDE]
    props = torch.as_tensor(pb * scale, dtype=torch.float32)
    tags = np.zeros(len(cat), bool)
    tags[[cat.index(t) for t in r.tags]] = True
    v = classification_view(net, x, props, tags)
    with torch.no_grad():
        from wsis.methods.labelpenet.model import classification_scores
        out = net.classification_outputs([x], [props])
        x1, _ = classification_scores(out["xc"], out["xp"], out["segments"], 1)
    v["x1"] = x1[torch.arange(len(x1)), torch.as_tensor(v["classes"])].numpy()
    views.append((r, small, scale, v, tags))

VARIANTS = {
    "current (product, nms 0.5)": {},
    "R^c box": {"box": "rc"},
    "unit confident": {"confident": "unit"},
    "heat": {"confident": "heat"},
    "heat, bg 1-heat": {"confident": "heat", "bg_from_conf": True},
    "mean": {"confident": "mean"},
    "mean, bg 1-mean": {"confident": "mean", "bg_from_conf": True},
    "product, bg 1-product": {"bg_from_conf": True},
    "unit, bg 1-unit": {"confident": "unit", "bg_from_conf": True},
}
res = {}
for name, kw in VARIANTS.items():
    hits = n = 0
    rel = []
    for r, small, scale, v, tags in views:
        b, lab = variant(small, v, tags, **kw)
        b = b / scale
        g = torch.as_tensor(np.asarray(r.gt.boxes), dtype=torch.float32).reshape(-1, 4)
        gl = np.asarray(r.gt.labels)
        for bb, ll in zip(b, lab):
            n += 1
            m = gl == cat[ll]
            iou = box_iou(torch.as_tensor(bb[None], dtype=torch.float32), g[torch.as_tensor(m)])[0]
            hits += int(float(iou.max()) >= 0.5)
            j = np.flatnonzero(m)[int(iou.argmax())]
            ga = float((g[j, 2] - g[j, 0]) * (g[j, 3] - g[j, 1]))
            rel.append(float((bb[2] - bb[0]) * (bb[3] - bb[1])) / ga)
    res[name] = {"boxes": n, "hits": hits, "median_area_vs_gt": float(np.median(rel))}
    print(name, res[name], flush=True)
print(json.dumps(res))
