"""Label-PEnet's module ladder (the analogue of papers/001 Table 2: box AP@0.5 and CorLoc after each
module, after cascaded pre-training and after forward-backward learning) and Table 6's analogue
(mAP^r at 0.25 / 0.5 / 0.75 and ABO of the final predictions).

    python benchmarks/bench_labelpenet.py synthetic [--train 40 --val 30 --config demo_labelpenet.yaml]
    python benchmarks/bench_labelpenet.py coco [--config labelpenet_cpu.yaml]

``synthetic``: wsis.data.synthetic.make_scenes (train seed 0, val seed 1, 128 px). ``coco``: the
BENCHMARK.md protocol, trained on the tags of coco128 + coco-train83, scored on coco-val50 (nothing
tuned on it). Training resumes from ``--workdir``: first cascaded pre-training alone (the
forward-backward schedule set to 0), scored; then the same workdir with the forward-backward
schedule, whose finished modules are loaded, not retrained; scored again. Extra ``key=value``
overrides after ``--set`` apply to both runs. Writes benchmarks/results/labelpenet[_synthetic].md/.json, or ``--out PATH``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, VAL_JSON, commit, load_train_set, machine, pct  # noqa: E402

from wsis.config import resolve_config  # noqa: E402
from wsis.data import load_dataset  # noqa: E402
from wsis.data.images import atomic_write  # noqa: E402
from wsis.eval import evaluate  # noqa: E402
from wsis.eval.detection import corloc, detection_ap  # noqa: E402
from wsis.methods import labelpenet  # noqa: E402
from wsis.methods.labelpenet.config import MODULES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def datasets(args):
    if args.dataset == "synthetic":
        from wsis.data.synthetic import make_scenes

        data = Path(args.workdir) / "data"
        return (make_scenes(data / "train", num_images=args.train, seed=0, image_size=(128, 128)),
                make_scenes(data / "val", num_images=args.val, seed=1, image_size=(128, 128)))
    return load_train_set(), load_dataset(VAL_JSON)


def score(predictor, val, module: str) -> dict:
    t = time.perf_counter()
    preds = {r.image_id: predictor.predict(r, module=module) for r in val}
    seconds = (time.perf_counter() - t) / max(len(val), 1)
    report = evaluate(val, preds, coco=False, thresholds=(0.25, 0.5, 0.75))
    voc = report["voc"]
    return {"box_ap50": detection_ap(val, preds, 0.5)["mAP"], "corloc": corloc(val, preds)["corloc"],
            "mAPr": {str(k): v for k, v in voc["mAP"].items()}, "abo": voc["abo"], "seconds_per_image": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=["synthetic", "coco"])
    parser.add_argument("--config", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--val", type=int, default=30)
    parser.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=None,
                        help="write OUT.json / OUT.md (default benchmarks/results/labelpenet[_synthetic]: the "
                             "hand-written history in labelpenet_synthetic.md would be replaced)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    synthetic = args.dataset == "synthetic"
    args.config = args.config or ("demo_labelpenet.yaml" if synthetic else "labelpenet_cpu.yaml")
    args.workdir = args.workdir or f"runs/bench_labelpenet_{args.dataset}"
    config = resolve_config(Path(args.config))
    train, val = datasets(args)
    out: dict = {"command": "python " + " ".join(sys.argv), "commit": commit(), "machine": machine(),
                 "config": str(config), "overrides": args.overrides, "train_images": len(train),
                 "val_images": len(val), "rows": {}}
    from wsis.config import load_config
    from wsis.engine.schedule import schedule_length
    from wsis.methods.labelpenet.config import LabelPENetConfig

    cfg = load_config(LabelPENetConfig, config, list(args.overrides))
    out["schedules"] = {m: schedule_length(getattr(cfg.schedule, m)) for m in (*MODULES, "forward_backward")}
    for phase, extra in (("cascaded pre-training", ["schedule.forward_backward.iterations=0"]),
                         ("forward-backward", [])):
        t = time.perf_counter()
        predictor = labelpenet.fit(train, config, list(args.overrides) + extra, args.workdir)
        out.setdefault("train_seconds", {})[phase] = time.perf_counter() - t
        for module in MODULES:
            out["rows"][f"{phase} / {module}"] = score(predictor, val, module)
            print(phase, module, out["rows"][f"{phase} / {module}"], flush=True)
    target = args.out or RESULTS / ("labelpenet_synthetic" if synthetic else "labelpenet")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(target.with_suffix(".json")) as f:
        json.dump(out, f, indent=2)
    lines = [f"# Label-PEnet module ladder ({args.dataset})", "", f"Command: `{out['command']}` (commit {out['commit']})",
             f"Train {len(train)} images (tags only), val {len(val)}; config {config.name} {' '.join(args.overrides)}; "
             f"iterations per stage {out['schedules']}.", "",
             "| after | module | box AP@0.5 | CorLoc | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | ABO |",
             "|---|---|---|---|---|---|---|---|"]
    for key, row in out["rows"].items():
        phase, module = key.split(" / ")
        m = row["mAPr"]
        lines.append(f"| {phase} | {module} | {pct(row['box_ap50'])} | {pct(row['corloc'])} | "
                     f"{pct(m.get('0.25'))} | {pct(m.get('0.5'))} | {pct(m.get('0.75'))} | {pct(row['abo'])} |")
    with atomic_write(target.with_suffix(".md")) as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
