"""A few images of a dataset: by file name (a list file or comma-separated names), by image id, or
the first N -- so that predicting part of a dataset keeps the dataset's own image ids."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from wsis.errors import InputError
from wsis.structures import RecordSet


def _names(spec: str) -> tuple[list[tuple[str, str]], str]:
    """(name, where it was given) pairs and the source: a text file (one name a line, ``#`` comments)
    or comma-separated names."""
    path = Path(spec)
    if path.is_file():
        names = []
        for line, text in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
            text = text.split("#", 1)[0].strip()
            if text:
                names.append((text, f"line {line}"))
        return names, str(path)
    return [(n.strip(), f"name {k}") for k, n in enumerate(spec.split(","), start=1) if n.strip()], "--images"


def parse_ids(spec: str) -> list[int]:
    """``"1,5,9"`` -> [1, 5, 9]; anything else is an error naming the option."""
    ids = []
    for part in spec.split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit():
            raise InputError("--ids", f"{part!r} is not an image id (expected comma-separated integers)")
        ids.append(int(part))
    return ids


def select_images(records: RecordSet, *, images: str | None = None, ids: Sequence[int] | None = None,
                  limit: int | None = None) -> RecordSet:
    """The records named by ``images`` (file names as the dataset lists them, or base names), with
    ``ids``, then the first ``limit`` of those; in the dataset's order. A name or id the dataset does
    not have is an error naming it."""
    chosen = list(records)
    if images is not None:
        wanted, source = _names(images)
        if not wanted:
            raise InputError(source, "no image names given")
        by_name = {}
        for r in chosen:
            by_name.setdefault(r.file_name, r.image_id)
            by_name.setdefault(Path(r.file_name).name, r.image_id)
        missing = [(n, where) for n, where in wanted if n not in by_name]
        if missing:
            name, where = missing[0]
            raise InputError(source, f"{where}: image {name!r} is not in {records.name or 'the dataset'} "
                                     f"({len(missing)} of {len(wanted)} names unknown)")
        keep = {by_name[n] for n, _ in wanted}
        chosen = [r for r in chosen if r.image_id in keep]
    if ids is not None:
        known = {r.image_id for r in records}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise InputError("--ids", f"image id(s) {unknown[:5]} not in {records.name or 'the dataset'}")
        keep = set(ids)
        chosen = [r for r in chosen if r.image_id in keep]
    if limit is not None:
        if limit < 1:
            raise InputError("--limit", f"must be at least 1, got {limit}")
        chosen = chosen[:limit]
    if not chosen:
        raise InputError("--images/--ids", "the selection leaves no image")
    return RecordSet(chosen, dict(records.categories), records.name)
