"""The method registry: the CLI's static name table matches the @register decorations, and listing
the names does not import torch."""
import subprocess
import sys

import pytest

from wsis.errors import InputError
from wsis.methods import METHODS, get_method


def test_static_table_matches_registrations():
    from wsis.methods.base import REGISTRY, Predictor

    for name, module in METHODS.items():
        get_method(name)
        assert REGISTRY[name].method == name
        assert REGISTRY[name].__module__.startswith(module)
        assert issubclass(REGISTRY[name], Predictor)
    assert set(REGISTRY) == set(METHODS)


def test_every_entry_module_has_fit_and_load():
    for name in METHODS:
        module = get_method(name)
        assert callable(module.fit) and callable(module.load)


def test_unknown_name_is_an_input_error():
    with pytest.raises(InputError, match="unknown method 'nope'"):
        get_method("nope")


def test_cli_lists_methods_without_torch():
    code = ("import sys, wsis.cli; p = wsis.cli.build_parser(); "
            "h = p._subparsers._group_actions[0].choices['train'].format_help(); "
            "assert 'mser_sgpo' in h and 'pdsl' in h, h; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_only_trained_py_writes_method_json():
    # a run is written one way (main process only, train_seconds summed): wsis.methods.trained
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "wsis"
    writers = []
    for path in root.rglob("*.py"):
        if path.name == "trained.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "atomic_write(" in line and ("META_FILE" in line or "method.json" in line):
                writers.append(f"{path.relative_to(root)}:{number}")
    assert not writers, f"method.json written outside wsis/methods/trained.py: {writers}"
