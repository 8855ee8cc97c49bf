"""Shared test constants."""
from pathlib import Path

# Real images with ground truth, outside the repository (../shared/data); tests skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
