"""Train the classification module (100 its) and the detection module (argv[2] its) on 16 synthetic scenes
(tags only) into argv[1]; later modules 0 iterations. Used by the detection diagnosis in
benchmarks/results/labelpenet_synthetic.md."""
import sys, torch
torch.set_num_threads(1)
from pathlib import Path
from wsis.data.synthetic import make_scenes
from wsis.methods import labelpenet
wd = Path(sys.argv[1])
det_it = int(sys.argv[2])
train = make_scenes(wd / "data/train", num_images=16, seed=0, image_size=(128, 128))
make_scenes(wd / "data/val", num_images=16, seed=1, image_size=(128, 128))
ov = ["schedule.classification.iterations=100", "schedule.classification.lr_steps=[80]",
      f"schedule.detection.iterations={det_it}", f"schedule.detection.lr_steps=[{int(det_it*0.8)}]",
      "schedule.detection.checkpoint_every=50",
      "schedule.refinement.iterations=0", "schedule.segmentation.iterations=0", "schedule.forward_backward.iterations=0"]
labelpenet.fit(train, "wsis/configs/demo_labelpenet.yaml", ov, wd)
