"""``results/prm.md`` from the PRM rows of ``results/diagnose.json``: the real (predicted-tag) pass of
each diagnosed PRM variant, both protocols, all80 and VOC20, with training time, seconds per image
and peak memory of the diagnosis run. The rows before 2026-12-02 (coco128 only) follow as history.

    python benchmarks/prm_table.py
"""
from __future__ import annotations

import json

from common import ROOT

RESULTS = ROOT / "benchmarks/results"


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def seconds_per_image(row: dict) -> str:
    """The diagnosis run's median s/image; a row whose peak stage came from the cache
    (``--stage-cache``, test-stage variants) did not run the backward passes: not an inference time."""
    if "--stage-cache" in row.get("command", ""):
        return "- (peaks cached)"
    return f"{row.get('median_s_per_image', float('nan')):.2f}"


def main() -> None:
    rows = json.loads((RESULTS / "diagnose.json").read_text())
    history = (RESULTS / "prm_history.md").read_text()
    lines = ["# PRM benchmark entry (BENCHMARK.md protocol)", "",
             "Train: coco128 + coco-train83 tags (211 images). Evaluate: coco-val50 (50 images, 360 instances + 3 "
             "crowd regions). Machine: the shared 2-core CPU development machine (load 5-12 during these runs: "
             "times are inflated several-fold). Superpixel-hierarchy proposals. Thresholds and variants chosen on "
             "training images only (out-of-fold tag mAP, `train_prm.py`); nothing tuned on coco-val50. Each row's "
             "command: `diagnose.json` (`benchmarks/diagnose.py`; this table: `python benchmarks/prm_table.py`). "
             "s/img is the median of the diagnosis run, which back-propagates the peaks of the predicted *and* the "
             "ground-truth classes (an upper bound of plain inference), proposals cached. train s is wall time on that "
             "busy machine (the photos row: ~10 CPU minutes, almost all of it the 5 out-of-fold calibration fits). "
             "The baseline row was trained by the since-removed driver prm_frozen.py; the same run today is "
             "`python benchmarks/train_prm.py --config wsis/configs/prm_cpu.yaml --workdir runs/prm_frozen_l0 "
             "model.frozen_backbone=true schedule.epochs=20`. Class prior on vs off at the same settings was not "
             "rerun through PRM for lack of time; its effect on tags is in `frozen_tags.md` (linear probe, sheep "
             "AP 18.4 -> 64.3 with Lite0, 39.3 -> 83.3 with Lite2; tag mAP 61.6 -> 67.2 / 61.8 -> 73.0). Stage by "
             "stage: `diagnose.md`.", "",
             "| variant | classes | mAP^r@0.25 | @0.5 | @0.7 | @0.75 | ABO | COCO AP | AP50 | AP75 | train s | s/img | peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for subset in ("all80", "voc20"):
            p = r[subset]["predicted"]
            c = p.get("coco", {})
            lines.append(f"| {name} | {subset} | {pct(p['mAP_0.25'])} | {pct(p['mAP_0.5'])} | {pct(p.get('mAP_0.7'))} | "
                         f"{pct(p.get('mAP_0.75'))} | {pct(p['ABO'])} | {pct(c.get('AP'))} | {pct(c.get('AP50'))} | "
                         f"{pct(c.get('AP75'))} | {r.get('train_seconds') or 0:.0f} | "
                         f"{seconds_per_image(r)} | {r.get('peak_rss_mib', 0):.0f} |")
    text = "\n".join(lines) + "\n\n" + history
    (RESULTS / "prm.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
