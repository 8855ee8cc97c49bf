"""Exploration of retrieval scores on TRAINING images (issue 11): per rule, the ABO (all 80 classes) of
the first 40 coco128 images with their ground-truth tags, each peak keeping its best proposal, no NMS
(class-aware: an instance's best IoU over the picks of its class's peaks). Cheaper than
tune_retrieval.py (no evaluator, no NMS); it shortlisted the rules tune_retrieval.py then compared.
Reads the peak stages cached by diagnose.py / tune_retrieval.py (--stage-cache) and U^2-Net-P maps.

    python benchmarks/explore_retrieval.py > benchmarks/results/explore_retrieval.txt
"""
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from common import TRAIN_JSON
from diagnose import cap_peaks, load_predictor, peak_stage

from wsis import masks as mask_ops
from wsis.data import load_dataset
from wsis.data.images import load_image
from wsis.cues.saliency import get_saliency
from wsis.proposals.retrieval import (RetrievalConfig, chunked_products, contour_masks, proposal_scores, support_iou,
                                      support_masks)



def main() -> None:
    torch.set_num_threads(1)
    pred = load_predictor(Path("runs/prm_photos"))
    data = load_dataset(TRAIN_JSON)
    records = [r for r in data if r.gt is not None and len(r.gt) and r.tags][:40]
    thr = np.asarray(pred.class_thresholds(), float)
    cache = Path("/tmp/wsis-cache-localise/stages")
    sal_model = get_saliency("u2netp")
    cat_ids = np.asarray(pred.category_ids)
    res = {}
    t0 = time.time()

    for ri, rec in enumerate(records):
        image = load_image(rec.path)
        st = peak_stage(pred, rec, image, thr, cache, 16)
        keep = cap_peaks(st, 16)
        peaks, prms, values = st["peaks"][keep], st["prms"][keep], st["values"][keep]
        s = int(st["size"])
        cm = np.zeros((len(cat_ids), s, s), np.float32)
        cm[st["used"]] = st["class_maps"]
        oracle = st["gt_cols"][peaks[:, 1]]
        peaks, prms, values = peaks[oracle], prms[oracle], values[oracle]
        gt, gk = rec.gt, ~rec.crowd
        g_rles, g_lab = [m for m, k in zip(gt.masks, gk) if k], gt.labels[gk]
        props = pred.proposals(rec)
        small = mask_ops.decode_resized(props.masks, props.image_size, s, s)
        areas = small.reshape(len(small), -1).sum(1)
        ok = (areas >= 0.00002 * s * s) & (areas < 0.85 * s * s)
        iou = mask_ops.iou(props.masks, g_rles)  # P x G
        sal = cv2.resize(sal_model(image, rec.path), (s, s), interpolation=cv2.INTER_LINEAR)
        best_pool = np.where(ok[:, None], iou, 0).max(0)
        rules = {}
        if len(peaks):
            cls = peaks[:, 1]
            cont = contour_masks(small, 5)
            rules["paper"] = proposal_scores(prms, cls, cm, small, RetrievalConfig(), cont)
            for t, sg in [(0.2, 0.02), (0.2, 0.01), (0.3, 0.01), (0.15, 0.01), (0.2, 0.0), (0.1, 0.0), (0.05, 0.0)]:
                rules[f"iou t{t} s{sg}"] = proposal_scores(prms, cls, cm, small, RetrievalConfig(score="iou", support_threshold=t, support_sigma=sg))
            inside = chunked_products(prms, small)
            for lam in (1.0, 2.0, 4.0):
                rules[f"mass-{lam}area"] = inside - lam * areas[None] / (s * s)
            # saliency-gated support
            for t, sg in [(0.2, 0.01), (0.2, 0.02)]:
                sup = support_masks(prms, t, sg) & (sal >= 0.5)[None]
                rules[f"iou sal t{t} s{sg}"] = support_iou(sup, small)
            # mass inside weighted by saliency of the mask (penalise non-salient area)
            nons = chunked_products((1 - sal)[None].astype(np.float32), small)[0]
            for lam in (1.0, 4.0):
                rules[f"mass-{lam}nonsal"] = inside - lam * nons[None] / (s * s)
            # CRM-component support: class map >= frac * peak value (component containing the peak)
            up = s / st["crm_hw"][0]
            for frac in (0.3, 0.5):
                sup = np.zeros((len(peaks), s, s), bool)
                for k, (_, c, y, x) in enumerate(peaks):
                    m = (cm[c] >= frac * values[k]).astype(np.uint8)
                    _, lab = cv2.connectedComponents(m)
                    yy, xx = min(int((y + 0.5) * up), s - 1), min(int((x + 0.5) * up), s - 1)
                    if lab[yy, xx] > 0:
                        sup[k] = lab == lab[yy, xx]
                rules[f"iou crm{frac}"] = support_iou(sup, small)
            for name in rules:
                rules[name][:, ~ok] = -np.inf
        # per instance ABO (class-aware, no NMS): best IoU of picks of its class
        for name, sc in rules.items():
            pick = sc.argmax(1)
            r = res.setdefault(name, [])
            for g in range(len(g_rles)):
                same = cat_ids[peaks[:, 1]] == g_lab[g]
                r.append(iou[pick[same], g].max() if same.any() else 0.0)
        # bound: instances with a peak of their class: best pool IoU (peak-oracle retrieval)
        r = res.setdefault("bound: every peaked class's instances get pool best", [])
        r2 = res.setdefault("pool ceiling", [])
        for g in range(len(g_rles)):
            same = (cat_ids[peaks[:, 1]] == g_lab[g]) if len(peaks) else np.zeros(0, bool)
            r.append(best_pool[g] if same.any() else 0.0)
            r2.append(best_pool[g])
        print(ri, f"{time.time()-t0:.0f}s", file=sys.stderr, flush=True)
    for name, v in res.items():
        print(f"{name:50s} ABO {100*np.mean(v):.1f}  n={len(v)}")


if __name__ == "__main__":
    main()
