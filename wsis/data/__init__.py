"""Dataset readers and writers: COCO JSON, PASCAL VOC trees, folders of images with a tags CSV."""
from __future__ import annotations

from pathlib import Path

from wsis.data.coco import read_coco, read_coco_results, write_coco_gt, write_coco_results
from wsis.data.folder import CATEGORIES_CSV, IMAGE_EXTENSIONS, read_categories, read_folder
from wsis.data.images import atomic_write, image_size, load_image, safe_join
from wsis.data.voc import VOC_CLASSES, read_voc, write_voc
from wsis.errors import InputError
from wsis.structures import RecordSet

__all__ = [
    "IMAGE_EXTENSIONS", "VOC_CLASSES", "atomic_write", "image_size", "load_image", "load_dataset",
    "read_categories", "read_coco", "read_coco_results", "read_folder", "read_voc", "safe_join", "write_coco_gt",
    "write_coco_results", "write_voc",
]


def _is_voc(path: Path) -> bool:
    return (path / "JPEGImages").is_dir() or (path / "VOC2012").is_dir()


def _reject_options(path: Path, kind: str, **options: object) -> None:
    # An option that the format cannot use is a user mistake, not something to ignore silently.
    for name, value in options.items():
        if value is not None:
            raise InputError(path, f"option {name} does not apply to a {kind} dataset")


def _class_list(folder: Path, categories: str | Path | None) -> dict[int, str] | None:
    if categories is not None:
        return read_categories(categories)
    if (folder / CATEGORIES_CSV).is_file():
        return read_categories(folder / CATEGORIES_CSV)
    return None


def load_dataset(
    path: str | Path,
    *,
    split: str | None = None,
    image_root: str | Path | None = None,
    tags_csv: str | Path | None = None,
    categories: str | Path | None = None,
    need_images: bool = True,
) -> RecordSet:
    """Read whatever ``path`` is: a COCO ``.json``, a VOC folder, a tags ``.csv`` or a folder of images.

    A folder of images uses its ``tags.csv`` when ``tags_csv`` is not given and the file exists,
    and its class list from ``categories`` (a COCO json or an ``id,name`` CSV) or else from a
    ``categories.csv`` beside the images. ``need_images=False`` reads a COCO json whose images are
    elsewhere (scoring needs only the json; the records' paths are then not checked).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset not found")
    if path.is_file() and path.suffix.lower() == ".json":
        _reject_options(path, "COCO", split=split, tags_csv=tags_csv, categories=categories)
        records = read_coco(path, image_root, need_images=need_images)
    elif path.is_file() and path.suffix.lower() == ".csv":
        _reject_options(path, "tags CSV", split=split, image_root=image_root, tags_csv=tags_csv)
        records = read_folder(path.parent, path, _class_list(path.parent, categories))
    elif path.is_dir() and _is_voc(path):
        _reject_options(path, "VOC", image_root=image_root, tags_csv=tags_csv, categories=categories)
        records = read_voc(path, split)
    elif path.is_dir():
        _reject_options(path, "image folder", split=split, image_root=image_root)
        if tags_csv is None and (path / "tags.csv").is_file():
            tags_csv = path / "tags.csv"
        records = read_folder(path, tags_csv, _class_list(path, categories))
    else:
        raise InputError(path, "not a dataset: expected a COCO .json, a VOC folder, a tags .csv or a folder of images")
    if len(records) == 0:
        raise InputError(path, "the dataset has no images")
    return records
