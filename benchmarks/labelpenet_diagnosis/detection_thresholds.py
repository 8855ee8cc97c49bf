"""Detection-module diagnosis: box AP / CorLoc on val at several score thresholds, for a snapshot of the
full net (Trainer last.pt), plus the foreground probability the box head gives the best RoI."""
import sys, json, torch, numpy as np
torch.set_num_threads(1)
from pathlib import Path
from wsis.config import load_config
from wsis.data.synthetic import make_scenes
from wsis.eval.detection import corloc, detection_ap
from wsis.methods.labelpenet import LabelPENetPredictor
from wsis.methods.labelpenet.config import LabelPENetConfig
from wsis.methods.labelpenet.model import LabelPENet
from wsis.engine.checkpoint import load_checkpoint
from wsis.data.images import load_image
from wsis.methods.labelpenet.inference import detection_view, _scaled
wd = Path(sys.argv[1])
snap = sys.argv[2]
val = make_scenes(wd / "data/val", num_images=16, seed=1, image_size=(128, 128))
cat = sorted(val.categories)
res = {"snapshot": snap}
for thr in [0.05, 0.01, 0.0]:
    cfg = load_config(LabelPENetConfig, "wsis/configs/demo_labelpenet.yaml", [f"test.score_threshold={thr}"])
    net = LabelPENet(cfg.model, len(cat))
    st = load_checkpoint(snap)
    net.load_state_dict(st["model"])
    p = LabelPENetPredictor(net, cfg, cat, val.categories, wd)
    preds = {r.image_id: p.predict(r, module="detection") for r in val}
    n = np.mean([len(v) for v in preds.values()])
    res[str(thr)] = {"box_ap50": detection_ap(val, preds, 0.5)["mAP"], "corloc": corloc(val, preds)["corloc"], "dets_per_image": float(n)}
# foreground prob on the RPN proposals best overlapping a GT object
from torchvision.ops import box_iou
best_fg, best_iou = [], []
for r in val:
    img = load_image(r.path)
    small, x, scale = _scaled(cfg, img, cfg.test.size, torch.device("cpu"))
    v = detection_view(net, x)
    gt = torch.as_tensor(np.asarray(r.gt.boxes), dtype=torch.float32).reshape(-1, 4)
    if gt.numel() == 0:
        continue
    iou = box_iou(torch.as_tensor(v["regressed"]) / scale, gt)
    best_iou.append(float(iou.max(0).values.mean()))
    best_fg.append(float(v["scores"].max()))
res["mean_best_rpn_iou_per_gt"] = float(np.mean(best_iou))
res["mean_max_fg_prob"] = float(np.mean(best_fg))
print(json.dumps(res))
