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
    p.add_argument("--categories", type=Path,
                   help="class list of a folder of images: a COCO json (its categories' ids and names) or an "
                        "id,name CSV (default: categories.csv beside the images, else 1..K alphabetically)")


def _load(path: Path, args: argparse.Namespace, need_images: bool = True):
    from wsis.data import load_dataset

    return load_dataset(path, split=getattr(args, "split", None), image_root=getattr(args, "image_root", None),
                        tags_csv=getattr(args, "tags", None), categories=getattr(args, "categories", None),
                        need_images=need_images)


def _has_class_list(path: Path, args: argparse.Namespace) -> bool:
    """Whether DATA fixes its class ids (COCO, VOC, a folder with a class list) rather than
    numbering its own tags."""
    from wsis.data import CATEGORIES_CSV

    folder = path.parent if path.is_file() and path.suffix.lower() == ".csv" else path
    own_folder = path.is_dir() and not ((path / "JPEGImages").is_dir() or (path / "VOC2012").is_dir())
    if not (own_folder or path.suffix.lower() == ".csv"):
        return True
    return getattr(args, "categories", None) is not None or (folder / CATEGORIES_CSV).is_file()


def _tags_source(path: Path, args: argparse.Namespace) -> Path:
    """The file a dataset's tags came from, for messages."""
    if getattr(args, "tags", None) is not None:
        return args.tags
    return path / "tags.csv" if path.is_dir() and (path / "tags.csv").is_file() else path


# ---------------------------------------------------------------------------------------------
def _predicted_part(gt, results, only_predicted: bool):
    """The ground truth to score: all of it (warning with the coverage when the predictions cover
    part of it) or, with ``--only-predicted``, the images that have results."""
    from wsis.errors import warn

    n, total = len(results.image_ids), len(gt)
    if only_predicted:
        if n == 0:
            raise InputError("--only-predicted", "the predictions have no result for any image")
        print(f"scoring the {n} of {total} images that have predictions")
        return gt.subset(sorted(results.image_ids))
    if n < total:
        warn(f"{n} of {total} images have predictions; the others are scored as finding nothing "
             "(--only-predicted scores only the predicted ones)")
    return gt


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wsis.data.coco import load_coco_results
    from wsis.data.images import atomic_write
    from wsis.eval import evaluate, format_table

    gt = _load(args.gt, args, need_images=False)  # scoring needs the json only
    results = load_coco_results(args.pred, gt)
    if results.note:
        print(results.note)
    gt = _predicted_part(gt, results, args.only_predicted)
    preds = {i: results.predictions[i] for i in gt.by_id()}
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

    records = _load(args.data, args, need_images=False)
    _check_image_sizes(records, args.data)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_coco_gt(records, args.out)
    print(f"{len(records)} images, {records.num_instances} instances, {len(records.categories)} categories "
          f"-> {args.out}")
    return 0


def _check_image_sizes(records, source: Path) -> None:
    """Every image's size as listed against its file's header; missing files are said, not hidden."""
    from wsis.data.images import image_size
    from wsis.errors import warn

    missing = [r for r in records if not r.path.is_file()]
    for r in records:
        if r.path.is_file() and image_size(r.path) != r.size:
            h, w = image_size(r.path)
            raise InputError(source, f"image {r.image_id} ({r.file_name}) is listed as {r.width}x{r.height} "
                                     f"but the file {r.path} is {w}x{h}")
    if missing:
        warn(f"image sizes not checked for {len(missing)} of {len(records)} images: file not found "
             f"(first: {missing[0].path}; --image-root names the images folder)")


def cmd_visualize(args: argparse.Namespace) -> int:
    from wsis.viz import write_overlays

    records = _load(args.data, args)
    preds = None
    if args.pred is not None:
        from wsis.data.coco import load_coco_results

        results = load_coco_results(args.pred, records)
        if results.note:
            print(results.note)
        preds = results.predictions
        records.categories = results.categories
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

    _check_method_name(args.method)
    config = config_path(args.method, args.config)
    records = _training_data(args)  # read and decoded before the method (torch) loads or a workdir exists
    method = get_method(args.method)
    print(resolution_line(args.method, config, args.overrides))
    if args.restart and args.workdir.exists():
        _move_aside(args.workdir)
    masks_for = [f"data.masks_for={args.masks_for}"] if args.masks_for else []
    method.fit(records, config=config, overrides=masks_for + list(args.overrides), workdir=args.workdir)
    print(f"trained {args.method}; checkpoint and config in {args.workdir}")
    return 0


def config_path(method: str, value: str | None) -> Path | None:
    """``--config``: a YAML file (a path, or a file name among the packaged configs), or a name:
    ``METHOD_NAME.yaml`` among the packaged configs, then ``NAME.yaml``. An unknown name lists the
    names the method has."""
    from wsis.config import PACKAGE_CONFIGS, resolve_config

    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() in (".yaml", ".yml") or path.is_file() or len(path.parts) > 1:
        return resolve_config(path)
    for candidate in (PACKAGE_CONFIGS / f"{method}_{value}.yaml", PACKAGE_CONFIGS / f"{value}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem[len(method) + 1:] for p in PACKAGE_CONFIGS.glob(f"{method}_*.yaml"))
    raise InputError("--config", f"no config named {value!r} for {method} (named configs: {', '.join(names) or 'none'}; "
                                 "or give a YAML path)")


def _check_method_name(name: str) -> None:
    from wsis.methods import METHODS

    if name not in METHODS:
        raise InputError("command line", f"unknown method '{name}' (available: {', '.join(sorted(METHODS))})")


def _training_data(args: argparse.Namespace):
    """The training records: tags present, classes without a tagged image dropped (they cannot be
    learnt), and, for a new workdir, every image decoded once so that a corrupt file stops the run
    before anything is written."""
    from tqdm import tqdm

    from wsis.data.images import check_decodable
    from wsis.structures import RecordSet

    records = _load(args.data, args)
    tagged = sorted({t for r in records for t in r.tags})
    if not tagged:
        raise InputError(_tags_source(args.data, args), "no image has a tag: training needs image-level tags "
                                                          "(a tags.csv with columns image,tags)")
    if len(tagged) < len(records.categories):
        print(f"training on the {len(tagged)} of {len(records.categories)} listed classes that have tagged images")
        records = RecordSet(records.records, {c: records.categories[c] for c in tagged}, records.name)
    if not args.workdir.exists() or args.restart:
        for r in tqdm(records, desc="checking images", unit="img", disable=len(records) < 200):
            check_decodable(r.path)
    print(data_line(records))
    return records


def resolution_line(method: str, config: Path | None, overrides) -> str:
    """The input sizes a run trains at, read from its config (every ``*image_size``/``min_size``/
    ``max_size``/``scales`` key); the config's keys are checked here, before any data is loaded on a device."""
    from wsis.config import load_config, to_dict
    from wsis.methods.base import REGISTRY

    found: list[str] = []

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            elif key in ("image_size", "min_size", "max_size", "scales"):
                found.append(f"{prefix}{key}={value}")

    walk(to_dict(load_config(REGISTRY[method].config_class, config, list(overrides))), "")
    return f"{method} ({config.name if config else 'defaults'}): " + (", ".join(found) or "resolution not configured")


def _move_aside(workdir: Path) -> None:
    import time

    old = workdir.with_name(f"{workdir.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    workdir.rename(old)
    print(f"--restart: the previous run is kept in {old}")


def data_line(records) -> str:
    """``20 images, 28 classes (person 6, car 3, ...)``: what a training run will learn from."""
    counts: dict[int, int] = {}
    for r in records:
        for t in r.tags:
            counts[t] = counts.get(t, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], records.categories.get(kv[0], "")))
    shown = ", ".join(f"{records.categories.get(c, c)} {n}" for c, n in ranked[:12])
    more = f", +{len(ranked) - 12} more" if len(ranked) > 12 else ""
    untagged = sum(1 for r in records if not r.tags)
    return (f"{len(records)} images ({untagged} without tags), {len(ranked)} classes "
            f"(images per class: {shown}{more})")


def cmd_predict(args: argparse.Namespace) -> int:
    from wsis.data.coco import write_coco_results
    from wsis.methods import load_trained, read_meta

    meta = read_meta(args.workdir)
    records = _prediction_images(args)
    to_data, names = _output_classes(meta, records, _has_class_list(args.data, args), args.data)
    model = load_trained(args.workdir, args.overrides)  # the heavy part starts here
    if args.semantic:
        from wsis.methods.dasnet.output import write_semantic_maps

        write_semantic_maps(model, records, args.semantic)
        print(f"semantic maps of {len(records)} images -> {args.semantic}")
    parallel = {"workers": args.workers} if args.workers > 1 else {}  # predictors without the option still work
    preds = {i: _relabel(p, to_data) for i, p in model.predict_records(records, progress=True, **parallel).items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_coco_results(preds, args.out, categories=names)
    n = sum(len(p) for p in preds.values())
    print(f"{n} instances on {len(preds)} images -> {args.out}")
    return 0


def _prediction_images(args: argparse.Namespace):
    from wsis.data.select import parse_ids, select_images

    records = _load(args.data, args)
    if args.images is None and args.ids is None and args.limit is None:
        return records
    chosen = select_images(records, images=args.images, ids=None if args.ids is None else parse_ids(args.ids),
                           limit=args.limit)
    print(f"predicting {len(chosen)} of {len(records)} images of {records.name or args.data}")
    return chosen


def _output_classes(meta: dict, data, data_has_classes: bool, source: Path) -> tuple[dict[int, int], dict[int, str]]:
    """Model category id -> the id written in the results, and the names of the written ids.

    Results are written in the id space of DATA when DATA has a class list (COCO, VOC, a folder
    with --categories or categories.csv), matched by name; a model class DATA does not have is an
    error, since any id written for it would mean another class there. A folder that numbers its
    own tags gets the model's ids. Either way every result carries its class name.
    """
    model = {int(k): v for k, v in meta["categories"].items()}
    if not data_has_classes:
        return {c: c for c in model}, model
    by_name = {n: c for c, n in data.categories.items()}
    missing = sorted(n for n in model.values() if n not in by_name)
    if missing:
        raise InputError(source, f"the model's class(es) {', '.join(map(repr, missing))} are not among the classes of "
                                 f"this dataset; predict on a folder without a class list, or train with --categories")
    return {c: by_name[n] for c, n in model.items()}, dict(data.categories)


def _relabel(inst, to_data: dict[int, int]):
    from wsis.structures import Instances

    labels = [to_data[int(c)] for c in inst.labels]
    return Instances(inst.image_size, inst.boxes, labels, inst.scores, inst.masks)


def cmd_pseudo_label(args: argparse.Namespace) -> int:
    records = _load(args.data, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.method == "labelpenet":
        from wsis.methods.labelpenet import export_pseudo_labels

        n = export_pseudo_labels(args.workdir, args.module, records.records, args.out)
        print(f"{n} pseudo instances ({args.module} module) on {len(records)} images -> {args.out}")
        return 0
    from wsis.methods.wise import pseudo_label

    labels = pseudo_label(records, config=config_path("wise", args.config), overrides=args.overrides, workdir=args.workdir,
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
    p.add_argument("--only-predicted", action="store_true",
                   help="score only the images that have at least one result (default: all, with a coverage warning); "
                        "an image predicted with no instance is not in a results file, so it is left out too")
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

    p = sub.add_parser("pseudo-label", help="pseudo masks as COCO json for any detector: WISE's (PRM peaks -> "
                                            "proposals), or a trained Label-PEnet module's calibrated outputs")
    _add_dataset_args(p)
    p.add_argument("--workdir", required=True, type=Path, help="run folder; the PRM stage trains in WORKDIR/prm")
    p.add_argument("--method", choices=["wise", "labelpenet"], default="wise")
    p.add_argument("--module", choices=["classification", "detection", "refinement"], default="refinement",
                   help="labelpenet: whose stored outputs (the next module's supervision) to export")
    p.add_argument("--config", help="YAML config of the wise method, by name ('cpu') or path")
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
    p.add_argument("--config", help="a config by name (e.g. 'cpu', 'small': wsis/configs/METHOD_NAME.yaml) or a "
                                    "YAML path (default: the paper's values)")
    p.add_argument("--workdir", required=True, type=Path,
                   help="checkpoints and logs; an existing run resumes (with the same settings only)")
    p.add_argument("--restart", action="store_true",
                   help="start over: an existing WORKDIR is renamed WORKDIR.old-DATE first")
    p.add_argument("--masks-for", help="dasnet: masks of the first N images by ascending id, or a file of ids / file names")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="run a trained method on images and write COCO results json")
    p.add_argument("--workdir", required=True, type=Path, help="the training workdir")
    _add_dataset_args(p)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--semantic", type=Path, help="dasnet: also a VOC-palette PNG per image and semantic.json here")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, one thread each, images split between them (default 1: this process)")
    _add_selection_args(p)
    p.add_argument("overrides", nargs="*",
                   help="inference settings key=value (e.g. test.class_threshold=-1, proposals.settings.max_side=320); "
                        "training settings are refused")
    p.set_defaults(func=cmd_predict)
    return parser


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", metavar="LIST",
                   help="only these images: a text file with one file name a line, or comma-separated names")
    p.add_argument("--ids", help="only these image ids of DATA (comma-separated)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N (selected) images")


def _show_warnings() -> None:
    """Input warnings as one ``wsis: warning:`` line each on stderr (no source line, no repeats hidden)."""
    import warnings

    from wsis.errors import InputWarning

    original = warnings.showwarning
    if getattr(original, "wsis", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            print(f"wsis: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    show.wsis = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    warnings.simplefilter("always", InputWarning)


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
    _show_warnings()
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
