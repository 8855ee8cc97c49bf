"""A user's own images: a folder, optionally with a ``image,tags`` CSV of image-level labels.

CSV example (tags are class names separated by ``;``)::

    image,tags
    cat1.jpg,cat
    park.jpg,dog;person
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from wsis.data.images import image_size, safe_join
from wsis.errors import InputError
from wsis.structures import ImageRecord, RecordSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _read_rows(tags_csv: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, image name, tag names) per data row."""
    if not tags_csv.is_file():
        raise InputError(tags_csv, "tags CSV not found")
    try:
        with open(tags_csv, encoding="utf-8-sig", newline="") as handle:  # -sig: Excel writes a BOM
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "image" not in header or "tags" not in header:
                raise InputError(tags_csv, f"the header must have columns image,tags; found {','.join(header) or 'nothing'}")
            reader.fieldnames = header
            rows = []
            for row in reader:
                tags = [t.strip() for t in (row.get("tags") or "").split(";") if t.strip()]
                rows.append((reader.line_num, (row.get("image") or "").strip(), tags))
            return rows
    except csv.Error as exc:
        raise InputError(tags_csv, f"malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(tags_csv, f"not UTF-8 text ({exc})") from None


def _category_table(rows: list[tuple[int, str, list[str]]], categories: Sequence[str] | None, tags_csv: Path | None) -> dict[str, int]:
    if categories is None:
        names = sorted({t for _, _, tags in rows for t in tags})
        return {n: i + 1 for i, n in enumerate(names)}
    names = [str(c) for c in categories]
    if len(set(names)) != len(names):
        raise InputError("categories", f"duplicate class names in {names}")
    table = {n: i + 1 for i, n in enumerate(names)}
    for line, _, tags in rows:
        unknown = [t for t in tags if t not in table]
        if unknown:
            raise InputError(tags_csv, f"line {line}: unknown class {unknown[0]!r} (known: {', '.join(names)})")
    return table


def _listed_records(image_dir: Path, tags_csv: Path, table: dict[str, int], rows) -> list[ImageRecord]:
    seen: dict[str, int] = {}
    records = []
    for image_id, (line, name, tags) in enumerate(rows, start=1):
        if not name:
            raise InputError(tags_csv, f"line {line}: empty image name")
        path = safe_join(image_dir, name, tags_csv)
        if name in seen:
            raise InputError(tags_csv, f"line {line}: image {name!r} already listed on line {seen[name]}")
        seen[name] = line
        if not path.is_file():
            raise InputError(tags_csv, f"line {line}: image {path} not found")
        h, w = image_size(path)
        records.append(ImageRecord(image_id, path, w, h, tuple(table[t] for t in tags), file_name=name))
    return records


def read_folder(image_dir: str | Path, tags_csv: str | Path | None = None, categories: Sequence[str] | None = None) -> RecordSet:
    """Images of a folder as records, with tags from ``tags_csv`` (ids 1..K, image ids 1..N).

    Without a CSV every image file in the folder (sorted by name) is a record with no tags.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(image_dir, "image folder not found")
    if tags_csv is not None:
        tags_csv = Path(tags_csv)
        rows = _read_rows(tags_csv)
        table = _category_table(rows, categories, tags_csv)
        records = _listed_records(image_dir, tags_csv, table, rows)
    else:
        table = _category_table([], categories, None)
        files = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        records = []
        for image_id, path in enumerate(files, start=1):
            h, w = image_size(path)
            records.append(ImageRecord(image_id, path, w, h))
    return RecordSet(records, {i: n for n, i in table.items()}, image_dir.name)
