"""The ``wsis`` command line.

Every sub-command is a thin layer over library functions; user errors (:class:`InputError`) end as
one line on stderr with exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from wsis.errors import InputError
from wsis.methods import METHODS


def _add_dataset_args(p: argparse.ArgumentParser, flag: str = "--data", required: bool = True) -> None:
    p.add_argument(flag, required=required, type=Path,
                   help="a COCO json, a VOC root (VOCdevkit or VOC2012), or a folder of images (with tags.csv)")
    p.add_argument("--split", help="VOC split name or split file")
    p.add_argument("--image-root", type=Path, help="images folder of a COCO json (guessed when omitted)")
    p.add_argument("--tags", type=Path, help="tags CSV (image,tags) of a folder of images")


def _load(path: Path, args: argparse.Namespace):
    from wsis.data import load_dataset

    return load_dataset(path, split=getattr(args, "split", None), image_root=getattr(args, "image_root", None),
                        tags_csv=getattr(args, "tags", None))


# ---------------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from wsis.data.coco import read_coco_results
    from wsis.data.images import atomic_write
    from wsis.eval import evaluate, format_table

    gt = _load(args.gt, args)
    preds = read_coco_results(args.pred, gt)
    report = evaluate(gt, preds, subset=args.subset, coco=not args.no_coco, detection=args.detection,
                      semantic=args.semantic, thresholds=tuple(args.thresholds))
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(args.out) as f:
            json.dump(report, f, indent=2)
        print(f"metrics written to {args.out}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from wsis.data.coco import write_coco_gt

    records = _load(args.data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_coco_gt(records, args.out)
    print(f"{len(records)} images, {records.num_instances} instances, {len(records.categories)} categories "
          f"-> {args.out}")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from wsis.viz import write_overlays

    records = _load(args.data, args)
    preds = None
    if args.pred is not None:
        from wsis.data.coco import read_coco_results

        preds = read_coco_results(args.pred, records)
    index = write_overlays(records.records, args.out, predictions=preds, categories=records.categories,
                           max_images=args.max_images, score_threshold=args.score_threshold,
                           side_by_side=args.side_by_side)
    print(f"overlays written; open {index}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from wsis.data.synthetic import make_scenes
    from wsis.data.coco import write_coco_gt

    records = make_scenes(args.out, num_images=args.images, seed=args.seed,
                          image_size=(args.size, args.size))
    write_coco_gt(records, args.out / "annotations.json")
    if args.format == "voc":
        from wsis.data.voc import write_voc

        write_voc(records, args.out / "voc", class_names=records.categories)
    elif args.format == "folder":
        _write_tags_csv(records, args.out / "images" / "tags.csv")
    print(f"{len(records)} images, {records.num_instances} instances -> {args.out}")
    return 0


def _write_tags_csv(records, path: Path) -> None:
    import csv

    from wsis.data.images import atomic_write

    with atomic_write(path) as f:
        w = csv.writer(f)
        w.writerow(["image", "tags"])
        for r in records:
            w.writerow([r.file_name, ";".join(records.categories[t] for t in r.tags)])


def cmd_demo(args: argparse.Namespace) -> int:
    from wsis.demo import run_demo

    run_demo(args.out, num_train=args.train_images, num_val=args.val_images, seed=args.seed,
             method=args.method, overrides=args.overrides)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wsis.methods import get_method

    method = get_method(args.method)
    records = _load(args.data, args)
    method.fit(records, config=args.config, overrides=args.overrides, workdir=args.workdir)
    print(f"trained {args.method}; checkpoint and config in {args.workdir}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from wsis.data.coco import write_coco_results
    from wsis.methods import load_trained

    model = load_trained(args.workdir)
    records = _load(args.data, args)
    preds = model.predict_records(records, progress=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_coco_results(preds, args.out)
    n = sum(len(p) for p in preds.values())
    print(f"{n} instances on {len(preds)} images -> {args.out}")
    return 0


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    from wsis.methods.wise import pseudo_label

    records = _load(args.data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    labels = pseudo_label(records, config=args.config, overrides=args.overrides, workdir=args.workdir,
                          out=args.out, mode=args.mode, epoch=args.epoch)
    print(f"{labels.num_instances} pseudo instances on {len(labels)} images -> {args.out}")
    return 0


def cmd_proposals(args: argparse.Namespace) -> int:
    from wsis.config import load_config
    from wsis.proposals.config import ProposalConfig
    from wsis.proposals.cache import ProposalCache

    records = _load(args.data, args)
    cfg = load_config(ProposalConfig, None, [f"method={args.method}"] +
                      [f"settings.{o}" for o in args.settings])
    entries = ProposalCache(args.cache).generate_all([r.path for r in records], cfg.method,
                                                     workers=args.workers, **cfg.settings)
    print(f"proposals of {len(entries)} images cached in {args.cache}")
    return 0


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wsis", description="Weakly supervised instance segmentation toolkit.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="generate synthetic scenes, train a method on their tags, evaluate, visualise")
    p.add_argument("--out", type=Path, default=Path("wsis_demo"), help="output folder (default: ./wsis_demo)")
    p.add_argument("--train-images", type=int, default=240)
    p.add_argument("--val-images", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="prm", help=f"one of {', '.join(sorted(METHODS))} (default: prm)")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="score predictions (COCO results json) against ground truth")
    _add_dataset_args(p, "--gt")
    p.add_argument("--pred", required=True, type=Path, help="COCO results json (RLE masks)")
    p.add_argument("--out", type=Path, help="write all metrics to this JSON file")
    p.add_argument("--subset", choices=["voc20"], help="score only the 20 PASCAL VOC classes")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.25, 0.5, 0.7, 0.75])
    p.add_argument("--no-coco", action="store_true", help="skip the pycocotools protocol")
    p.add_argument("--detection", action="store_true", help="also box AP@0.5 and CorLoc")
    p.add_argument("--semantic", action="store_true", help="also semantic mIoU")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert", help="convert a dataset (e.g. PASCAL VOC) to a COCO ground-truth json")
    _add_dataset_args(p)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("visualize", help="overlay PNGs of ground truth or predictions plus an HTML index")
    _add_dataset_args(p)
    p.add_argument("--pred", type=Path, help="COCO results json; ground truth is drawn when omitted")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--max-images", type=int)
    p.add_argument("--score-threshold", type=float, default=0.0)
    p.add_argument("--side-by-side", action="store_true", help="ground truth and predictions next to each other")
    p.set_defaults(func=cmd_visualize)

    p = sub.add_parser("synth", help="write the synthetic scenes dataset (COCO json, plus VOC or folder layout)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--format", choices=["coco", "voc", "folder"], default="coco")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("pseudo-label", help="WISE pseudo masks (PRM peaks -> proposals) as COCO json for any detector")
    _add_dataset_args(p)
    p.add_argument("--workdir", required=True, type=Path, help="run folder; the PRM stage trains in WORKDIR/prm")
    p.add_argument("--config", type=Path, help="YAML config of the wise method")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--mode", choices=["argmax", "sample"], default="argmax",
                   help="each peak's most objectness-likely proposal, or the seeded draw of --epoch")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_pseudo_label)

    p = sub.add_parser("proposals", help="generate and cache object proposals for a dataset (parallel, resumable)")
    _add_dataset_args(p)
    p.add_argument("--method", default="superpixel",
                   help="superpixel | selective_search | selective_search+grabcut")
    p.add_argument("--cache", required=True, type=Path, help="cache folder (e.g. RUN/proposals of a method)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("settings", nargs="*", help="generator settings key=value, e.g. max_proposals=500")
    p.set_defaults(func=cmd_proposals)

    p = sub.add_parser("train", help="train a method on a dataset's image-level tags")
    p.add_argument("method", metavar="METHOD", help=f"one of {', '.join(sorted(METHODS))}")
    _add_dataset_args(p)
    p.add_argument("--config", type=Path, help="YAML config (defaults: the paper's values)")
    p.add_argument("--workdir", required=True, type=Path, help="checkpoints and logs; an existing run resumes")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="run a trained method on images and write COCO results json")
    p.add_argument("--workdir", required=True, type=Path, help="the training workdir")
    _add_dataset_args(p)
    p.add_argument("--out", required=True, type=Path)
    p.set_defaults(func=cmd_predict)
    return parser


def _version() -> str:
    from wsis import __version__

    return f"wsis {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may follow the options (argparse alone only takes them before)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        print(f"wsis: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wsis: interrupted (a training run resumes from its last checkpoint)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
