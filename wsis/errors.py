"""User-facing errors.

Every problem caused by the user's input (a missing image, malformed annotation file, bad option)
is raised as :class:`InputError`, which names the offending file. The CLI turns it into a single
line on stderr and exit code 2; library users catch it like any other exception.
"""
from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """Bad user input: ``path`` names the file (or option) at fault, ``problem`` says what is wrong."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InputWarning(UserWarning):
    """Input that is usable but probably not what the user meant (a likely typo, partial coverage)."""


def warn(message: str) -> None:
    """Report suspicious input once per call; the CLI prints it as one ``wsis: warning:`` line."""
    import warnings

    warnings.warn(message, InputWarning, stacklevel=2)
