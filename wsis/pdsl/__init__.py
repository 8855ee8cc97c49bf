"""PDSL: parallel detection-and-segmentation learning (Shen et al., ``papers/002``).

Modules: :mod:`wsis.detectors.wsddn` (detection branch: WSDDN + OICR refinement heads, Eqs. 2-4),
:mod:`wsis.pdsl.seeds` (seed sample acquisition, cached GrabCut), :mod:`wsis.pdsl.masks` (mask heads,
Eq. 5, correlation loss Eqs. 6-8), :mod:`wsis.pdsl.model` (the network and its loss, Eq. 1),
:mod:`wsis.pdsl.data` (training samples and augmentation), :mod:`wsis.pdsl.inference` (multi-scale
flipped test), :mod:`wsis.pdsl.config`; the method (``wsis train pdsl``) is :mod:`wsis.methods.pdsl`.

Differences from the paper, and why (details in each module):

* Proposals: the toolkit's superpixel-hierarchy proposals (their boxes) instead of MCG, which cannot
  be obtained here; precomputed MCG/COB/selective-search files can be named in ``proposals``.
* Backbone: ResNet-50 with a dilated res5 (stride 16) stands in for ResNet50-WS (GPU config);
  EfficientNet-Lite0, also at stride 16, on the CPU. A 1x1 conv reduces the backbone's channels
  before the RoI ops (fc6 would otherwise take 2048 x 7 x 7 inputs).
* Loss normalisation: the proposal sums of Eqs. 3 and 5 are divided by the number of proposals and
  Eq. 5's BCE is averaged over pixels (OICR's and Mask R-CNN's definitions); Eq. 3's background
  weight is OICR's.
* GrabCut masks are cached on disk per (image, box) instead of recomputed every iteration; the seeds
  themselves are chosen afresh at every step from the current detector, as in the paper.
* fc6/fc7 start from scratch (WSDDN/OICR inherit VGG's), so they get Detectron2's fc initialisation
  instead of std 0.01, which left WSDDN's loss at its starting value in our tests.
* Gradient norm clipped at 5 (both configs): WSDDN's log loss diverged without it at lr >= 0.002.
* Test-time selection ranks (proposal, class) pairs without a score threshold: with n^r = 0 the
  scores are WSDDN's S^0, about 1/(P C) each.
* On a CPU the mask branch sees a sample of the proposals per image (``loss.mask_rois``), the
  backbone is frozen, the mask heads learn at 4x the rate, and the schedule, scales and proposal count
  are reduced (``wsis/configs/pdsl_cpu.yaml`` says why for each).
"""
