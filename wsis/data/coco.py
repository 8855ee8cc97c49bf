"""COCO instances JSON: ground truth reader/writer and the results (predictions) format.

Our extensions to the format (ignored by pycocotools): an image entry may carry
``"wsis_ignore": RLE`` (pixels excluded from every IoU) and an annotation ``"wsis_difficult": true``.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from wsis import masks as mask_ops
from wsis.data.images import atomic_write, safe_join
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances, RecordSet


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot read JSON ({exc})") from None


def _require(entry: Any, keys: tuple[str, ...], what: str, path: Path) -> None:
    if not isinstance(entry, dict):
        raise InputError(path, f"{what} is not an object: {str(entry)[:80]}")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise InputError(path, f"{what} lacks key(s) {', '.join(missing)}")


def _int(entry: dict, key: str, what: str, path: Path, positive: bool = False) -> int:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or (positive and value <= 0):
        raise InputError(path, f"{what}: {key} must be a{' positive' if positive else 'n'} integer, got {value!r}")
    return int(value)


def _to_rle(segm: Any, height: int, width: int, path: Path, what: str) -> dict:
    """Any COCO segmentation form -> compressed RLE, checked against the image size."""
    try:
        return _checked_rle(segm, height, width, path, what)
    except (TypeError, ValueError) as exc:  # non-numeric coordinates or counts
        raise InputError(path, f"{what}: invalid segmentation ({exc})") from None


def _checked_rle(segm: Any, height: int, width: int, path: Path, what: str) -> dict:
    if isinstance(segm, list):
        if not all(isinstance(p, list) and len(p) % 2 == 0 for p in segm):
            raise InputError(path, f"{what}: polygons must be lists of x,y pairs")
        # pycocotools reads a 4-number "polygon" as a box, and <3 points have no area: drop them.
        parts = [p for p in segm if len(p) >= 6]
        if not parts:
            return mask_ops.encode(np.zeros((height, width), bool))
        return mask_ops.polygons_to_rle(parts, height, width)
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = [int(v) for v in segm["size"]]
        if size != [height, width]:
            raise InputError(path, f"{what}: RLE size {size} differs from the image's {height}x{width} (h x w)")
        counts = segm["counts"]
        if isinstance(counts, list) and sum(counts) != height * width:
            raise InputError(path, f"{what}: uncompressed RLE covers {sum(counts)} pixels, not {height * width}")
        return mask_ops.compress(segm)
    raise InputError(path, f"{what}: unsupported segmentation {str(segm)[:80]}")


def _xywh_to_xyxy(box: Any, path: Path, what: str) -> list[float]:
    try:
        x, y, w, h = (float(v) for v in box)
    except (TypeError, ValueError):
        raise InputError(path, f"{what}: bbox must be 4 numbers, got {str(box)[:80]}") from None
    return [x, y, x + w, y + h]


def _guess_image_root(json_path: Path, first_file: str | None, need_images: bool = True) -> Path:
    folder = json_path.parent
    stem = json_path.stem
    candidates = [folder, folder / "images"]  # the latter: what `wsis synth` and `wsis demo` write
    if stem.startswith("instances_"):
        name = stem[len("instances_"):]
        candidates = [folder.parent / name, folder / name] + candidates
    if first_file is None:
        return next((c for c in candidates if c.is_dir()), folder)
    for candidate in candidates:
        if safe_join(candidate, first_file, json_path).is_file():
            return candidate
    if not need_images:
        return folder
    tried = ", ".join(str(c) for c in candidates)
    raise InputError(json_path, f"cannot find image {first_file!r} in {tried}; give the image folder explicitly")


def _check_categories(data: dict, path: Path) -> dict[int, str]:
    categories: dict[int, str] = {}
    for cat in data["categories"]:
        _require(cat, ("id", "name"), "category", path)
        cid = _int(cat, "id", "category", path)
        if cid in categories:
            raise InputError(path, f"duplicate category id {cid}")
        categories[cid] = str(cat["name"])
    return categories


def _image_instances(image: dict, anns: list[dict], path: Path) -> tuple[Instances, np.ndarray, np.ndarray]:
    h, w = int(image["height"]), int(image["width"])
    # An image whose annotations all carry a segmentation gets masks; otherwise it is box-only.
    with_masks = all(a.get("segmentation") not in (None, []) for a in anns)
    boxes, rles = [], []
    for a in anns:
        what = f"annotation {a.get('id', '?')}"
        rle = _to_rle(a["segmentation"], h, w, path, what) if with_masks else None
        rles.append(rle)
        if "bbox" in a:
            boxes.append(_xywh_to_xyxy(a["bbox"], path, what))
        elif rle is not None:
            boxes.append(mask_ops.to_bbox([rle])[0].tolist())
        else:
            raise InputError(path, f"{what} has neither segmentation nor bbox")
    labels = [int(a["category_id"]) for a in anns]
    gt = Instances((h, w), np.asarray(boxes, np.float32).reshape(-1, 4), labels, masks=rles if with_masks else None)
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool)
    difficult = np.asarray([bool(a.get("wsis_difficult", False)) for a in anns], bool)
    return gt, crowd, difficult


def read_coco(annotation_json: str | Path, image_root: str | Path | None = None, *,
              need_images: bool = True) -> RecordSet:
    """Read a COCO instances JSON (polygons, RLE, crowd) into a RecordSet with COCO's own ids.

    ``image_root`` defaults to ``<json dir>/../<name>`` for ``instances_<name>.json``, else the
    JSON's folder (or ``images/`` beside it). Crowd annotations are kept in ``gt`` with
    ``crowd=True`` and count as tags. ``need_images=False``: images that cannot be found are not an
    error (scoring needs only the json); the records then point into the json's folder.
    """
    path = Path(annotation_json)
    data = _load_json(path)
    _require(data, ("images", "categories"), "the top level", path)
    for key in ("images", "categories", "annotations"):
        if not isinstance(data.get(key, []), list):
            raise InputError(path, f"{key!r} must be a list")
    categories = _check_categories(data, path)
    images: dict[int, dict] = {}
    for image in data["images"]:
        _require(image, ("id", "file_name", "width", "height"), "image entry", path)
        image_id = _int(image, "id", "image entry", path)
        for key in ("width", "height"):
            _int(image, key, f"image {image_id}", path, positive=True)
        if image_id in images:
            raise InputError(path, f"duplicate image id {image_id}")
        images[image_id] = image
    by_image: dict[int, list[dict]] = defaultdict(list)
    for k, ann in enumerate(data.get("annotations", [])):
        what = f"annotation {ann.get('id', k) if isinstance(ann, dict) else k}"
        _require(ann, ("image_id", "category_id"), what, path)
        if _int(ann, "image_id", what, path) not in images:
            raise InputError(path, f"{what} refers to unknown image id {ann['image_id']}")
        if _int(ann, "category_id", what, path) not in categories:
            raise InputError(path, f"{what} has unknown category id {ann['category_id']}")
        by_image[int(ann["image_id"])].append(ann)
    first = str(data["images"][0]["file_name"]) if data["images"] else None
    root = Path(image_root) if image_root is not None else _guess_image_root(path, first, need_images)
    records = []
    for image_id, image in images.items():
        h, w = int(image["height"]), int(image["width"])
        gt, crowd, difficult = _image_instances(image, by_image.get(image_id, []), path)
        ignore = image.get("wsis_ignore")
        if ignore is not None:
            ignore = _to_rle(ignore, h, w, path, f"wsis_ignore of image {image_id}")
        file_name = str(image["file_name"])
        records.append(ImageRecord(
            image_id, safe_join(root, file_name, path), w, h, tuple(gt.labels.tolist()), gt, crowd, difficult,
            ignore, file_name,
        ))
    name = path.stem[len("instances_"):] if path.stem.startswith("instances_") else path.stem
    return RecordSet(records, categories, name)


# ----------------------------------------------------------------------------------------- writing
def _xywh(boxes: np.ndarray) -> list[list[float]]:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).tolist()


def _dump(obj: Any, path: Path) -> None:
    with atomic_write(path) as handle:
        json.dump(obj, handle, separators=(",", ":"))


def write_coco_gt(recordset: RecordSet, path: str | Path) -> None:
    """Write ground truth as a COCO instances JSON (RLE segmentations) that pycocotools loads."""
    images, annotations = [], []
    for record in recordset:
        entry = {"id": int(record.image_id), "file_name": record.file_name, "width": record.width, "height": record.height}
        if record.ignore is not None:
            entry["wsis_ignore"] = mask_ops.compress(record.ignore)
        images.append(entry)
        gt = record.gt
        if gt is None or len(gt) == 0:
            continue
        rles = gt.rles() if gt.has_masks else None
        areas = mask_ops.area(rles) if rles is not None else np.prod(gt.boxes[:, 2:] - gt.boxes[:, :2], axis=1)
        for i, box in enumerate(_xywh(gt.boxes)):
            ann = {
                "id": len(annotations) + 1, "image_id": int(record.image_id), "category_id": int(gt.labels[i]),
                "iscrowd": int(record.crowd[i]), "area": float(areas[i]), "bbox": box,
            }
            if rles is not None:
                ann["segmentation"] = rles[i]
            if record.difficult[i]:
                ann["wsis_difficult"] = True
            annotations.append(ann)
    categories = [{"id": int(c), "name": n, "supercategory": ""} for c, n in sorted(recordset.categories.items())]
    data = {"info": {"description": recordset.name}, "licenses": [], "images": images,
            "annotations": annotations, "categories": categories}
    _dump(data, Path(path))


def write_coco_results(predictions: dict[int, Instances], path: str | Path,
                       categories: Mapping[int, str] | None = None) -> None:
    """Write predictions as a COCO results list (image_id, category_id, score, bbox, segmentation).

    With ``categories`` every entry also carries ``category_name`` (ignored by pycocotools), so a
    reader can tell ids of another dataset from its own and match classes by name.
    """
    results = []
    for image_id in sorted(predictions):
        inst = predictions[image_id]
        rles = inst.rles() if inst.has_masks else None
        for i, box in enumerate(_xywh(inst.boxes)):
            entry = {"image_id": int(image_id), "category_id": int(inst.labels[i]), "score": float(inst.scores[i]), "bbox": box}
            if categories is not None:
                entry["category_name"] = categories[int(inst.labels[i])]
            if rles is not None:
                entry["segmentation"] = rles[i]
            results.append(entry)
    _dump(results, Path(path))


@dataclass
class CocoResults:
    """A results file read against a ground truth: ``predictions`` for every gt image (empty where
    the file has none), the ids of the images it has results for, the names of the class ids in
    ``predictions`` (the gt's; the results' own when the gt has no class list, e.g. a folder of
    untagged photos), and a one-line ``note`` when the class ids came from another dataset and were
    matched by name (else None)."""

    predictions: dict[int, Instances]
    image_ids: set[int]
    categories: dict[int, str]
    note: str | None = None


def _named_ids(data: list, path: Path) -> dict[int, str] | None:
    """``{category_id: category_name}`` of the results, None when they carry no names."""
    named = [isinstance(r, dict) and "category_name" in r for r in data]
    if not any(named):
        return None
    if not all(named):
        raise InputError(path, "some results have a category_name and some do not")
    table: dict[int, str] = {}
    for k, r in enumerate(data):
        cid = _int(r, "category_id", f"result {k}", path)
        name = str(r["category_name"])
        if table.setdefault(cid, name) != name:
            raise InputError(path, f"result {k}: category id {cid} is named both {table[cid]!r} and {name!r}")
    return table


def match_categories(pred_names: Mapping[int, str] | None, gt: RecordSet, path: Path) -> tuple[dict[int, int], str | None]:
    """Predicted category id -> gt category id, and a note when they were matched by name.

    Ids are taken as they are when the results carry no names or every name agrees with the gt's
    name for that id; otherwise every class is looked up by name, and a name the gt does not have
    is an error (scoring would relabel it as whatever class the gt has under that id).
    """
    if pred_names is None or all(gt.categories.get(c) == n for c, n in pred_names.items()):
        return {c: c for c in gt.categories}, None
    by_name = {n: c for c, n in gt.categories.items()}
    missing = sorted(n for n in pred_names.values() if n not in by_name)
    if missing:
        known = ", ".join(list(by_name)[:20]) + (", ..." if len(by_name) > 20 else "")
        raise InputError(path, f"classes {', '.join(map(repr, missing))} of the predictions are not among the classes "
                               f"of {gt.name or 'the ground truth'} ({known}); the model was trained on other classes")
    mapping = {c: by_name[n] for c, n in pred_names.items()}
    moved = [f"{n} {c}->{mapping[c]}" for c, n in sorted(pred_names.items()) if mapping[c] != c]
    note = (f"{path.name}: class ids come from another dataset; matched {len(mapping)} class(es) by name "
            f"({', '.join(moved[:6])}{', ...' if len(moved) > 6 else ''})")
    return mapping, note


def load_coco_results(path: str | Path, gt: RecordSet) -> CocoResults:
    """Read a COCO results list, validated against ``gt`` (see :class:`CocoResults`).

    Either every result has a ``segmentation`` (masks as RLE) or none has (boxes only, masks None).
    Results carrying ``category_name`` are put in ``gt``'s id space by name (:func:`match_categories`).
    """
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, list):
        raise InputError(path, "a COCO results file must be a JSON list")
    records = gt.by_id()
    with_masks = all(isinstance(r, dict) and "segmentation" in r for r in data)
    if data and not with_masks and any(isinstance(r, dict) and "segmentation" in r for r in data):
        raise InputError(path, "some results have a segmentation and some do not")
    pred_names = _named_ids(data, path)
    if gt.categories:
        id_map, note = match_categories(pred_names, gt, path)
        categories = dict(gt.categories)
    else:  # nothing to match against: the results' ids stand, with their names when they have them
        ids = {_int(r, "category_id", f"result {k}", path) for k, r in enumerate(data) if isinstance(r, dict) and "category_id" in r}
        id_map, note = {c: c for c in ids}, None
        categories = {c: (pred_names or {}).get(c, str(c)) for c in sorted(ids)}
    grouped: dict[int, list[dict]] = defaultdict(list)
    for k, res in enumerate(data):
        _require(res, ("image_id", "category_id", "score") + (() if with_masks else ("bbox",)), f"result {k}", path)
        if not isinstance(res["score"], (int, float)) or isinstance(res["score"], bool):
            raise InputError(path, f"result {k}: score must be a number, got {res['score']!r}")
        if _int(res, "image_id", f"result {k}", path) not in records:
            raise InputError(path, f"result {k} refers to unknown image id {res['image_id']}")
        if _int(res, "category_id", f"result {k}", path) not in id_map:
            raise InputError(path, f"result {k} has unknown category id {res['category_id']}")
        grouped[int(res["image_id"])].append(res)
    out = {}
    for image_id, record in records.items():
        results = grouped.get(image_id, [])
        h, w = record.height, record.width
        rles = [_to_rle(r["segmentation"], h, w, path, f"result for image {image_id}") for r in results] if with_masks else None
        if results and "bbox" in results[0] and all("bbox" in r for r in results):
            boxes = np.asarray([_xywh_to_xyxy(r["bbox"], path, f"result for image {image_id}") for r in results], np.float32)
        else:
            boxes = mask_ops.to_bbox(rles) if rles else np.zeros((0, 4), np.float32)
        out[image_id] = Instances(
            (h, w), boxes, [id_map[int(r["category_id"])] for r in results], [float(r["score"]) for r in results], rles,
        )
    return CocoResults(out, set(grouped), categories, note)


def read_coco_results(path: str | Path, gt: RecordSet) -> dict[int, Instances]:
    """The predictions of :func:`load_coco_results`: every gt image gets an entry."""
    return load_coco_results(path, gt).predictions
