"""Typed configs: dataclasses whose defaults are a paper's values, read from YAML, overridden by
``key=value`` pairs on the command line (``optim.lr=0.001``). Unknown keys and ill-typed values are
input errors naming the file, so a typo never silently trains with a default.

A YAML file may start from others: ``_base_: other.yaml`` (or a list, merged in order) loads those
first (paths relative to the file, else a name in the package's ``wsis/configs``) and then applies
the file's own keys on top, section by section; inside a section (``prm: {_base_: prm_cpu.yaml}``)
the other file fills that section. A config named without a folder that does not exist
where it is named is looked up in ``wsis/configs`` too, so ``--config prm_cpu.yaml`` works anywhere."""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from wsis.errors import InputError

T = TypeVar("T")

PACKAGE_CONFIGS = Path(__file__).parent / "configs"
BASE_KEY = "_base_"


def _coerce(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where, source)
            except InputError as e:
                errors.append(e)
        raise errors[0] if errors else InputError(source, f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(source, f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, source, prefix=where + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(source, f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise InputError(source, f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where, source) for v, a in zip(value, args))
        inner = args[0] if args else Any
        items = [_coerce(v, inner, where, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(source, f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise InputError(source, f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise InputError(source, f"{where}: expected true/false, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise InputError(source, f"{where}: expected a number, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InputError(source, f"{where}: expected an integer, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise InputError(source, f"{where}: expected a string, got {value!r}")
    if tp is Path:
        return Path(str(value))
    return value


def _build(cls: type[T], data: dict, source: str, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(source, f"unknown config key '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k, source) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise InputError("command line", f"override '{key}': '{p}' is not a section")
    node[parts[-1]] = value


def to_dict(cfg: Any) -> dict:
    """Config -> plain dict (Paths as str), for YAML/JSON dumps next to results."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path``, then by ``key=value`` overrides."""
    tree: dict = to_dict(cls())
    if path is not None:
        path = resolve_config(path)
        data = read_yaml_config(path)
        check_moved_keys(cls, _leaf_keys(data), path)
        _merge(tree, data)
    check_moved_keys(cls, override_keys(overrides), "command line")
    _apply(tree, overrides)
    return _build(cls, tree, str(path) if path is not None else "command line")


# ---------------------------------------------------------------- keys that moved

def moved_keys(cls: type) -> dict[str, str]:
    """``old dotted key -> new dotted key`` of a method config whose layout changed (the class's
    ``MOVED_KEYS``); a moved section moves with everything under it."""
    return dict(getattr(cls, "MOVED_KEYS", {}) or {})


def _is_field_path(cls: Any, dotted: str) -> bool:
    for part in dotted.split("."):
        sub = _dataclass_in(cls)
        if sub is None:
            return False
        hints = typing.get_type_hints(sub)
        if part not in {f.name for f in dataclasses.fields(sub)}:
            return False
        cls = hints[part]
    return True


def _dataclass_in(tp: Any) -> Any:
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _renamed(key: str, moves: dict[str, str]) -> str | None:
    """The new name of ``key`` under ``moves`` (the longest matching old prefix wins), else None."""
    for old in sorted(moves, key=len, reverse=True):
        if key == old or key.startswith(old + "."):
            return moves[old] + key[len(old):]
    return None


def check_moved_keys(cls: type, keys: list[str], source: str | Path) -> None:
    """An error naming the new key for any ``keys`` (dotted) that ``cls`` no longer has because it moved."""
    moves = moved_keys(cls)
    if not moves:
        return
    for key in keys:
        new = _renamed(key, moves)
        if new is not None and not _is_field_path(cls, key):
            raise InputError(source, f"config key '{key}' is now '{new}' (every method's config has the sections "
                                     "model / data / schedule / proposals / test; see the README)")


def migrate_moved_keys(cls: type, config: dict) -> dict:
    """A saved config (``method.json``, a checkpoint's settings) in an older layout, moved to today's
    by ``cls``'s ``MOVED_KEYS``; keys already in the new layout are kept as they are."""
    moves = moved_keys(cls)
    out = copy.deepcopy(config)
    for key in _leaf_keys(config):
        new = _renamed(key, moves)
        if new is None or _is_field_path(cls, key):
            continue
        value = _pop_dotted(out, key)
        if not _has_dotted(out, new):
            _set_dotted(out, new, value)
    return out


def _leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out += _leaf_keys(v, f"{prefix}{k}.")
        else:
            out.append(prefix + str(k))
    return out


def _pop_dotted(tree: dict, key: str) -> Any:
    parts = key.split(".")
    nodes = [tree]
    for p in parts[:-1]:
        nodes.append(nodes[-1][p])
    value = nodes[-1].pop(parts[-1])
    for node, p in zip(reversed(nodes[:-1]), reversed(parts[:-1])):  # drop sections left empty
        if node[p] == {}:
            del node[p]
    return value


def _has_dotted(tree: dict, key: str) -> bool:
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def override_keys(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """The dotted keys of ``key=value`` overrides (an item without ``=`` is an error)."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise InputError("command line", f"override '{item}' is not of the form key=value")
        keys.append(item.split("=", 1)[0].strip())
    return keys


def _apply(tree: dict, overrides: list[str] | tuple[str, ...]) -> None:
    for key, item in zip(override_keys(overrides), overrides):
        raw = item.split("=", 1)[1]
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        _set_dotted(tree, key, value)


def with_overrides(cfg: T, overrides: list[str] | tuple[str, ...], source: str = "command line") -> T:
    """``cfg`` (a config dataclass) with ``key=value`` overrides applied, checked like any config."""
    if not overrides:
        return cfg
    check_moved_keys(type(cfg), override_keys(overrides), source)
    tree = to_dict(cfg)
    _apply(tree, overrides)
    return _build(type(cfg), tree, source)


def resolve_config(path: str | Path, relative_to: Path | None = None) -> Path:
    """The file a config name refers to: as given (relative to ``relative_to`` when set), else the
    package's ``wsis/configs/<name>``."""
    path = Path(path)
    candidates = [relative_to / path if relative_to is not None and not path.is_absolute() else path]
    if not path.is_absolute() and len(path.parts) == 1:
        candidates.append(PACKAGE_CONFIGS / path)
    for c in candidates:
        if c.is_file():
            return c
    raise InputError(candidates[0], "config file not found")


def read_yaml_config(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The nested dict of a YAML config with its ``_base_`` files merged under it."""
    if path.resolve() in seen:
        raise InputError(path, f"{BASE_KEY} includes itself ({' -> '.join(str(p) for p in seen + (path,))})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise InputError(path, f"malformed YAML{_yaml_where(e)}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(path, "a config file must be a mapping of keys to values")
    return _expand_bases(data, path, seen + (path.resolve(),))


def _yaml_where(error: yaml.YAMLError) -> str:
    """`` at line L, column C`` of a YAML error (1-based), where the parser knows it."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _expand_bases(node: dict, path: Path, seen: tuple[Path, ...]) -> dict:
    """``node`` with the files its ``_base_`` names (and its sections' ones) merged under it."""
    bases = node.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise InputError(path, f"{BASE_KEY} must be a file name or a list of file names")
    tree: dict = {}
    for base in bases:
        try:
            base_path = resolve_config(base, path.parent)
        except InputError:
            raise InputError(path, f"{BASE_KEY} file '{base}' not found") from None
        _merge(tree, read_yaml_config(base_path, seen))
    _merge(tree, {k: _expand_bases(v, path, seen) if isinstance(v, dict) else v for k, v in node.items()})
    return tree


def from_dict(cls: type[T], data: dict, source: str = "config") -> T:
    """Defaults of ``cls`` updated by a (possibly partial) nested dict, e.g. a config saved with a model."""
    tree: dict = to_dict(cls())
    _merge(tree, data)
    return _build(cls, tree, source)


def _merge(base: dict, update: dict) -> None:
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
