"""Usage: fit_short.py WORKDIR DET_ITERATIONS [CLS_ITERATIONS] [KEY=VALUE ...]. Train the classification
module (CLS_ITERATIONS, default 100, lr x0.1 at 80 %) and the detection module (DET_ITERATIONS) on 16
synthetic scenes (tags only) into WORKDIR; later modules 0 iterations. Used by the diagnosis in
benchmarks/results/labelpenet_synthetic.md."""
import sys
from pathlib import Path

import torch

from wsis.data.synthetic import make_scenes
from wsis.methods import labelpenet

torch.set_num_threads(1)
wd = Path(sys.argv[1])
det_it = int(sys.argv[2])
cls_it = int(sys.argv[3]) if len(sys.argv) > 3 else 100
train = make_scenes(wd / "data/train", num_images=16, seed=0, image_size=(128, 128))
make_scenes(wd / "data/val", num_images=16, seed=1, image_size=(128, 128))
ov = [f"schedule.classification.iterations={cls_it}", f"schedule.classification.lr_steps=[{int(cls_it * 0.8)}]",
      f"schedule.detection.iterations={det_it}", f"schedule.detection.lr_steps=[{int(det_it * 0.8)}]",
      "schedule.detection.checkpoint_every=50",
      "schedule.refinement.iterations=0", "schedule.segmentation.iterations=0",
      "schedule.forward_backward.iterations=0", *sys.argv[4:]]
labelpenet.fit(train, "wsis/configs/demo_labelpenet.yaml", ov, wd)
