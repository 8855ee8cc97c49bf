"""PASCAL VOC reader and writer.

Layout: ``JPEGImages/<name>.jpg``, ``Annotations/<name>.xml`` (tags, boxes, difficult),
``SegmentationObject/<name>.png`` and ``SegmentationClass/<name>.png`` (palette PNGs whose *indices*
are object / class numbers; 255 marks the unlabelled boundary band) and ``ImageSets/*/<split>.txt``.

Image ids: ``int(name without "_")`` (2007_000063 -> 2007000063) when every name is digits and
underscores and the ids are unique, else 1..N in reading order.
"""
from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from wsis import masks as mask_ops
from wsis.data.images import atomic_write, image_size, load_image, safe_join
from wsis.errors import InputError
from wsis.structures import ImageRecord, Instances, RecordSet

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_IGNORE = 255


@dataclass
class _XmlAnnotation:
    size: tuple[int, int] | None  # (h, w), None when absent or zero
    names: list[str] = field(default_factory=list)
    boxes: list[list[float]] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)


# ----------------------------------------------------------------------------------------- reading
def _voc_dir(root: Path) -> Path:
    if (root / "VOC2012").is_dir():
        return root / "VOC2012"
    if not root.is_dir():
        raise InputError(root, "VOC folder not found")
    if not (root / "JPEGImages").is_dir():
        raise InputError(root, "not a VOC folder: no JPEGImages/ (nor VOC2012/JPEGImages/)")
    return root


def _split_file(voc: Path, split: str) -> Path:
    as_path = Path(split)
    if as_path.suffix == ".txt" or len(as_path.parts) > 1 or as_path.is_file():
        if not as_path.is_file():
            raise InputError(as_path, "split file not found")
        return as_path
    for sub in ("Segmentation", "Main"):
        candidate = voc / "ImageSets" / sub / f"{split}.txt"
        if candidate.is_file():
            return candidate
    raise InputError(voc / "ImageSets" / "Segmentation" / f"{split}.txt", f"split {split!r} not found (nor in ImageSets/Main)")


def _image_names(voc: Path, split: str | None) -> list[str]:
    if split is not None:
        listing = _split_file(voc, split)
        # Main/<class>_<split>.txt lines read "<name> <flag>": the name is the first token.
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(listing, f"cannot read split file ({exc})") from None
        names = [line.split()[0] for line in lines if line.strip()]
        for name in names:
            safe_join(voc / "JPEGImages", name, listing)
        return list(dict.fromkeys(names))
    for sub, ext in (("SegmentationObject", ".png"), ("Annotations", ".xml")):
        found = sorted(p.stem for p in (voc / sub).glob(f"*{ext}"))
        if found:
            return found
    return []


def _image_ids(names: Sequence[str]) -> list[int]:
    if all(re.fullmatch(r"\d+(_\d+)*", n) for n in names):
        ids = [int(n.replace("_", "")) for n in names]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(names) + 1))


def _xml_int(node: ET.Element, tag: str, xml: Path) -> float:
    text = node.findtext(tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InputError(xml, f"<{tag}> missing or not a number: {text!r}") from None


def _read_xml(xml: Path, class_names: Sequence[str]) -> _XmlAnnotation:
    try:
        root = ET.parse(xml).getroot()
    except ET.ParseError as exc:
        raise InputError(xml, f"malformed XML ({exc})") from None
    size = None
    size_node = root.find("size")
    if size_node is not None:
        h, w = int(_xml_int(size_node, "height", xml)), int(_xml_int(size_node, "width", xml))
        size = (h, w) if h > 0 and w > 0 else None  # a few VOC files carry 0x0 sizes
    ann = _XmlAnnotation(size)
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_names:
            raise InputError(xml, f"unknown class name {name!r}")
        box = obj.find("bndbox")
        if box is None:
            raise InputError(xml, f"object {name!r} has no <bndbox>")
        x0, y0, x1, y1 = (_xml_int(box, t, xml) for t in ("xmin", "ymin", "xmax", "ymax"))
        # VOC boxes are 1-based inclusive pixel indices; pixel edges are one less on the low side.
        ann.names.append(name)
        ann.boxes.append([x0 - 1, y0 - 1, x1, y1])
        ann.difficult.append((obj.findtext("difficult") or "0").strip() not in ("0", ""))
    return ann


def _read_indices(png: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(png) as image:
            if image.mode not in ("P", "L"):
                raise InputError(png, f"expected a palette (mode P) PNG, got mode {image.mode}")
            indices = np.asarray(image, dtype=np.uint8)
    except InputError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(png, f"cannot read mask PNG ({exc})") from None
    if indices.shape != size:
        raise InputError(png, f"mask is {indices.shape[1]}x{indices.shape[0]} but the image is {size[1]}x{size[0]}")
    return indices


def _instances_from_pngs(obj: np.ndarray, cls: np.ndarray, cls_png: Path, num_classes: int):
    """Object ids -> (labels, masks); each object's class is the majority class under it."""
    ids = np.setdiff1d(np.unique(obj), [0, _IGNORE])
    joint = np.bincount(obj.ravel().astype(np.int64) * 256 + cls.ravel(), minlength=256 * 256).reshape(256, 256)
    votes = joint[ids][:, 1:_IGNORE]  # class 0 (background) and 255 (boundary) never name an object
    labels = votes.argmax(axis=1) + 1
    for oid, label, count in zip(ids, labels, votes.max(axis=1) if len(ids) else []):
        if count == 0:
            raise InputError(cls_png, f"object {oid} covers no class pixels")
        if label > num_classes:
            raise InputError(cls_png, f"class index {label} under object {oid} exceeds the {num_classes} classes")
    masks = obj[None] == ids[:, None, None]
    return labels.astype(np.int64), masks


def _difficult_for_masks(labels: np.ndarray, ann: _XmlAnnotation | None, class_names: Sequence[str]) -> np.ndarray:
    # VOC numbers SegmentationObject instances in the XML's object order; trust that only where the
    # class agrees, since re-annotated masks need not follow any XML.
    flags = np.zeros(len(labels), bool)
    if ann is None:
        return flags
    for i, label in enumerate(labels):
        if i < len(ann.names) and class_names.index(ann.names[i]) + 1 == label:
            flags[i] = ann.difficult[i]
    return flags


def _find_image(voc: Path, name: str) -> Path:
    for ext in _IMAGE_EXTS:
        path = voc / "JPEGImages" / f"{name}{ext}"
        if path.is_file():
            return path
    raise InputError(voc / "JPEGImages" / f"{name}.jpg", "image not found")


def _read_record(voc: Path, name: str, image_id: int, class_names: Sequence[str]) -> ImageRecord:
    image = _find_image(voc, name)
    xml = voc / "Annotations" / f"{name}.xml"
    ann = _read_xml(xml, class_names) if xml.is_file() else None
    size = ann.size if ann is not None and ann.size is not None else image_size(image)
    obj_png = voc / "SegmentationObject" / f"{name}.png"
    cls_png = voc / "SegmentationClass" / f"{name}.png"
    xml_labels = [] if ann is None else [class_names.index(n) + 1 for n in ann.names]
    gt, difficult, ignore = None, None, None
    if obj_png.is_file():
        if not cls_png.is_file():
            raise InputError(cls_png, f"class PNG missing for {obj_png.name}")
        obj, cls = _read_indices(obj_png, size), _read_indices(cls_png, size)
        labels, masks = _instances_from_pngs(obj, cls, cls_png, len(class_names))
        rles = mask_ops.encode_many(masks)
        gt = Instances(size, mask_ops.to_bbox(rles), labels, masks=rles)
        difficult = _difficult_for_masks(labels, ann, class_names)
        band = (obj == _IGNORE) | (cls == _IGNORE)
        ignore = mask_ops.encode(band) if band.any() else None
    elif ann is not None:
        gt = Instances(size, np.asarray(ann.boxes, np.float32).reshape(-1, 4), xml_labels)
        difficult = np.asarray(ann.difficult, bool)
    tags = set(xml_labels) | (set() if gt is None else set(gt.labels.tolist()))
    return ImageRecord(image_id, image, size[1], size[0], tuple(tags), gt, None, difficult, ignore, image.name)


def read_voc(root: str | Path, split: str | None = None, class_names: Sequence[str] | None = None) -> RecordSet:
    """Read a VOC-format dataset (``root`` = the ``VOC2012`` folder or its parent).

    ``split`` is a name looked up in ``ImageSets/Segmentation`` then ``ImageSets/Main``, or a path to
    a split file; without it every image with a SegmentationObject PNG (else with an XML) is read.
    ``class_names`` replaces the 20 VOC classes (ids are 1..K in that order).
    """
    names_table = tuple(class_names) if class_names is not None else VOC_CLASSES
    voc = _voc_dir(Path(root))
    names = _image_names(voc, split)
    records = [_read_record(voc, n, i, names_table) for n, i in zip(names, _image_ids(names))]
    categories = {i + 1: n for i, n in enumerate(names_table)}
    return RecordSet(records, categories, f"{voc.name}-{split}" if split else voc.name)


# ----------------------------------------------------------------------------------------- writing
def voc_colormap(n: int = 256) -> np.ndarray:
    """The standard VOC palette: (n, 3) uint8, index 255 -> (224, 224, 192)."""
    index = np.arange(n)
    cmap = np.zeros((n, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            bit = (index >> channel >> (3 * shift)) & 1
            cmap[:, channel] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def _save_palette_png(indices: np.ndarray, path: Path) -> None:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(voc_colormap().ravel().tolist())
    with atomic_write(path, "wb") as handle:
        image.save(handle, format="PNG")


def _output_names(records: Sequence[ImageRecord]) -> list[str]:
    stems = [Path(r.file_name).stem for r in records]
    if len(set(stems)) == len(stems) and all(re.fullmatch(r"[\w.\-]+", s) for s in stems):
        return stems
    return [f"{r.image_id:06d}" for r in records]


def _class_index(recordset: RecordSet, class_names: Sequence[str], root: Path) -> dict[int, int]:
    """Dataset category id -> 1-based index in ``class_names`` (for the categories in use)."""
    used = {t for r in recordset for t in r.tags}
    used |= {int(l) for r in recordset if r.gt is not None for l in r.gt.labels}
    index = {}
    for cid in sorted(used):
        name = recordset.categories.get(cid)
        if name not in class_names:
            raise InputError(root, f"category {cid} ({name!r}) is not a class of the VOC table; pass class_names")
        index[cid] = list(class_names).index(name) + 1
    return index


def _same_format(a: Path, b: Path) -> bool:
    def norm(p: Path) -> str:
        return {".jpeg": ".jpg"}.get(p.suffix.lower(), p.suffix.lower())

    return norm(a) == norm(b)


def _write_image(record: ImageRecord, target: Path) -> None:
    if _same_format(record.path, target):
        if not record.path.is_file():
            raise InputError(record.path, "image not found")
        with atomic_write(target, "wb") as handle, open(record.path, "rb") as source:
            shutil.copyfileobj(source, handle)
        return
    pixels = Image.fromarray(load_image(record.path))
    with atomic_write(target, "wb") as handle:
        pixels.save(handle, format=Image.registered_extensions()[target.suffix.lower()])


def _index_pngs(record: ImageRecord, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Object and class index images; crowd regions and the ignore region become 255."""
    obj = np.zeros(record.size, np.uint8)
    cls = np.zeros(record.size, np.uint8)
    masks = record.gt.mask_array()
    keep = ~record.crowd
    band = masks[record.crowd].any(axis=0) if record.crowd.any() else np.zeros(record.size, bool)
    if record.ignore is not None:
        band |= record.ignore_mask()
    obj[band] = cls[band] = _IGNORE
    # Paint large instances first so that overlapping small ones (COCO allows overlap) stay visible.
    kept = np.flatnonzero(keep)
    for k in sorted(range(len(kept)), key=lambda k: -int(masks[kept[k]].sum())):
        region = masks[kept[k]]
        obj[region] = k + 1
        cls[region] = labels[kept[k]]
    return obj, cls


def _xml_text(name: str, file_name: str, record: ImageRecord, objects: list[tuple[str, np.ndarray, bool]], segmented: bool) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2012"
    ET.SubElement(root, "filename").text = file_name
    size = ET.SubElement(root, "size")
    for tag, value in (("width", record.width), ("height", record.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = str(int(segmented))
    for cname, box, difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = cname
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        bnd = ET.SubElement(obj, "bndbox")
        # Back to VOC's 1-based inclusive pixel indices (inverse of the reader's conversion).
        x0, y0 = np.floor(box[:2]).astype(int) + 1
        x1, y1 = np.ceil(box[2:]).astype(int)
        x0, x1 = max(x0, 1), min(max(x1, x0), record.width)
        y0, y1 = max(y0, 1), min(max(y1, y0), record.height)
        for tag, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bnd, tag).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc(
    recordset: RecordSet,
    root: str | Path,
    split: str = "train",
    image_ext: str = ".jpg",
    class_names: Sequence[str] | None = None,
) -> None:
    """Write ``recordset`` as a VOC tree under ``root`` (images, XML, palette PNGs, split list).

    Crowd regions and ``ignore`` become the 255 band. Tags not backed by an instance cannot be
    expressed in VOC and are lost; overlapping masks keep the smaller instance on top.
    """
    table = tuple(class_names) if class_names is not None else VOC_CLASSES
    if len(table) >= _IGNORE:
        raise ValueError(f"VOC PNGs hold at most 254 classes, got {len(table)}")
    root = Path(root)
    index = _class_index(recordset, table, root)
    for sub in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = _output_names(recordset.records)
    for record, name in zip(recordset, names):
        if int((~record.crowd).sum()) >= _IGNORE:
            raise InputError(record.path, f"{int((~record.crowd).sum())} instances: VOC object PNGs hold at most 254")
        file_name = f"{name}{image_ext}"
        _write_image(record, root / "JPEGImages" / file_name)
        objects, segmented = [], False
        if record.gt is not None:
            labels = np.asarray([index[int(l)] for l in record.gt.labels], np.int64)
            keep = np.flatnonzero(~record.crowd)
            objects = [(table[labels[i] - 1], record.gt.boxes[i], bool(record.difficult[i])) for i in keep]
            if record.gt.has_masks:
                segmented = True
                obj, cls = _index_pngs(record, labels)
                _save_palette_png(obj, root / "SegmentationObject" / f"{name}.png")
                _save_palette_png(cls, root / "SegmentationClass" / f"{name}.png")
        with atomic_write(root / "Annotations" / f"{name}.xml") as handle:
            handle.write(_xml_text(name, file_name, record, objects, segmented))
    with atomic_write(root / "ImageSets" / "Segmentation" / f"{split}.txt") as handle:
        handle.write("".join(f"{n}\n" for n in names))
