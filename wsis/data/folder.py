"""A user's own images: a folder, optionally with a ``image,tags`` CSV of image-level labels.

CSV example (tags are class names separated by ``;``; a field holding a comma must be quoted)::

    image,tags
    cat1.jpg,cat
    park.jpg,dog;person

The class ids are 1..K in alphabetical order of the tags, unless a class list is given: a
``categories.csv`` (``id,name``) beside the images, a COCO json's categories (``--categories
GT.json``: the folder's tags then get that dataset's ids, so predictions score against it without
hand edits) or a list of names. With a class list an unknown tag is an error naming its line;
without one, two tags one letter apart are reported as a likely typo.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Mapping, Sequence

from wsis.data.images import image_size, safe_join
from wsis.errors import InputError, warn
from wsis.structures import ImageRecord, RecordSet

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CATEGORIES_CSV = "categories.csv"

Row = tuple[int, str, list[str]]  # (line number, image name, tag names)


def _open_csv(path: Path):
    if not path.is_file():
        raise InputError(path, "file not found")
    return open(path, encoding="utf-8-sig", newline="")  # -sig: Excel writes a BOM


def _header(reader, path: Path, wanted: tuple[str, str]) -> tuple[dict[str, int], int]:
    """Column index of each wanted name, and the header's width."""
    header = [h.strip() for h in next(reader, [])]
    if any(w not in header for w in wanted):
        raise InputError(path, f"line 1: the header must have columns {','.join(wanted)}; found {','.join(header) or 'nothing'}")
    return {name: header.index(name) for name in wanted}, len(header)


def _fields(row: list[str], width: int, line: int, path: Path) -> list[str] | None:
    """The row's cells, None for a blank line; a row of another width is an error (an unquoted
    comma would otherwise drop a tag without a word)."""
    if not any(c.strip() for c in row):
        return None
    if len(row) != width:
        raise InputError(path, f"line {line}: {len(row)} fields, the header has {width} "
                               "(separate tags with ';', or quote a field that holds a comma)")
    return row


def _split_tags(text: str, line: int, path: Path) -> list[str]:
    tags = [t.strip() for t in text.split(";") if t.strip()]
    for t in tags:
        if "," in t:
            raise InputError(path, f"line {line}: tag {t!r} holds a comma; separate tags with ';'")
    return tags


def _read_rows(tags_csv: Path) -> list[Row]:
    """(line number, image name, tag names) per data row."""
    try:
        with _open_csv(tags_csv) as handle:
            reader = csv.reader(handle)
            cols, width = _header(reader, tags_csv, ("image", "tags"))
            rows = []
            for row in reader:
                cells = _fields(row, width, reader.line_num, tags_csv)
                if cells is not None:
                    tags = _split_tags(cells[cols["tags"]], reader.line_num, tags_csv)
                    rows.append((reader.line_num, cells[cols["image"]].strip(), tags))
            return rows
    except csv.Error as exc:
        raise InputError(tags_csv, f"malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(tags_csv, f"not UTF-8 text ({exc})") from None


# ------------------------------------------------------------------------------------ class lists
def _categories_csv(path: Path) -> dict[int, str]:
    table: dict[int, str] = {}
    try:
        with _open_csv(path) as handle:
            reader = csv.reader(handle)
            cols, width = _header(reader, path, ("id", "name"))
            for row in reader:
                cells = _fields(row, width, reader.line_num, path)
                if cells is None:
                    continue
                raw, name = cells[cols["id"]].strip(), cells[cols["name"]].strip()
                if not raw.isdigit() or int(raw) == 0:
                    raise InputError(path, f"line {reader.line_num}: id must be a positive integer, got {raw!r}")
                if not name:
                    raise InputError(path, f"line {reader.line_num}: empty class name")
                if int(raw) in table:
                    raise InputError(path, f"line {reader.line_num}: id {raw} already used for {table[int(raw)]!r}")
                table[int(raw)] = name
    except csv.Error as exc:
        raise InputError(path, f"malformed CSV ({exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc})") from None
    return table


def _categories_json(path: Path) -> dict[int, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(path, f"malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(path, f"cannot read JSON ({exc})") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats:
        raise InputError(path, "no 'categories' list (expected a COCO json)")
    table: dict[int, str] = {}
    for cat in cats:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise InputError(path, f"category entry needs an integer id and a name: {str(cat)[:80]}")
        table[int(cat["id"])] = str(cat["name"])
    return table


def read_categories(path: str | Path) -> dict[int, str]:
    """A class list ``{id: name}`` from a COCO json's ``categories`` or a ``categories.csv``
    (header ``id,name``)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "class list not found")
    table = _categories_json(path) if path.suffix.lower() == ".json" else _categories_csv(path)
    if not table:
        raise InputError(path, "the class list is empty")
    names = list(table.values())
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise InputError(path, f"class name {dup!r} is listed twice")
    return table


def _edit_distance_one(a: str, b: str) -> bool:
    """True when ``b`` is ``a`` with one letter changed, inserted, deleted or two neighbours swapped."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long = (a, b) if len(a) < len(b) else (b, a)
    i = next((k for k in range(len(short)) if short[k] != long[k]), len(short))
    return short[i:] == long[i + 1:]


def _warn_near_duplicates(rows: list[Row], tags_csv: Path) -> None:
    first_line: dict[str, int] = {}
    count: dict[str, int] = {}
    for line, _, tags in rows:
        for t in tags:
            first_line.setdefault(t, line)
            count[t] = count.get(t, 0) + 1
    names = sorted(count)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if _edit_distance_one(a, b):
                warn(f"{tags_csv}: tags {a!r} (line {first_line[a]}, {count[a]} image(s)) and {b!r} "
                     f"(line {first_line[b]}, {count[b]} image(s)) differ by one letter; a typo? "
                     f"Give the class list (--categories or {CATEGORIES_CSV}) to make unknown tags errors")


def _as_table(categories: Sequence[str] | Mapping[int, str]) -> dict[int, str]:
    if isinstance(categories, Mapping):
        return {int(k): str(v) for k, v in categories.items()}
    names = [str(c) for c in categories]
    if len(set(names)) != len(names):
        raise InputError("categories", f"duplicate class names in {names}")
    return {i + 1: n for i, n in enumerate(names)}


def _category_table(rows: list[Row], categories: Sequence[str] | Mapping[int, str] | None,
                    tags_csv: Path | None) -> dict[str, int]:
    """name -> id: alphabetical 1..K of the tags, or the given class list (tags checked against it)."""
    if categories is None:
        if tags_csv is not None:
            _warn_near_duplicates(rows, tags_csv)
        names = sorted({t for _, _, tags in rows for t in tags})
        return {n: i + 1 for i, n in enumerate(names)}
    table = {n: i for i, n in _as_table(categories).items()}
    for line, _, tags in rows:
        unknown = [t for t in tags if t not in table]
        if unknown:
            close = [n for n in table if _edit_distance_one(unknown[0], n)]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            known = ", ".join(list(table)[:30]) + (", ..." if len(table) > 30 else "")
            raise InputError(tags_csv, f"line {line}: unknown class {unknown[0]!r}{hint} (known: {known})")
    return table


def _listed_records(image_dir: Path, tags_csv: Path, table: dict[str, int], rows: list[Row]) -> list[ImageRecord]:
    seen: dict[str, int] = {}
    records = []
    for image_id, (line, name, tags) in enumerate(rows, start=1):
        if not name:
            raise InputError(tags_csv, f"line {line}: empty image name")
        try:
            path = safe_join(image_dir, name, tags_csv)
        except InputError as e:
            raise InputError(tags_csv, f"line {line}: {e.problem}") from None
        if name in seen:
            raise InputError(tags_csv, f"line {line}: image {name!r} already listed on line {seen[name]}")
        seen[name] = line
        if not path.is_file():
            raise InputError(tags_csv, f"line {line}: image {path} not found")
        h, w = image_size(path)
        records.append(ImageRecord(image_id, path, w, h, tuple(table[t] for t in tags), file_name=name))
    return records


def read_folder(image_dir: str | Path, tags_csv: str | Path | None = None,
                categories: Sequence[str] | Mapping[int, str] | None = None) -> RecordSet:
    """Images of a folder as records, with tags from ``tags_csv`` (image ids 1..N in CSV order).

    ``categories``: the class list, as names (ids 1..K in that order) or ``{id: name}`` (e.g.
    :func:`read_categories` of a COCO json); the record set's category table is then that list.
    Without it the ids are 1..K over the tags in alphabetical order. Without a CSV every image
    file in the folder (sorted by name) is a record with no tags.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise InputError(image_dir, "image folder not found")
    if tags_csv is not None:
        tags_csv = Path(tags_csv)
        if not tags_csv.is_file():
            raise InputError(tags_csv, "tags CSV not found")
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
