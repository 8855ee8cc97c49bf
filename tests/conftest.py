"""Shared test constants."""
from pathlib import Path

# Real images with ground truth, outside the repository (../shared/data); tests skip without it.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _private_proposal_cache(tmp_path_factory):
    """Tests never read or fill the user's shared proposal cache (wsis.proposals.cache)."""
    import os

    before = os.environ.get("WSIS_CACHE")
    os.environ["WSIS_CACHE"] = str(tmp_path_factory.mktemp("wsis_cache"))
    yield
    if before is None:
        os.environ.pop("WSIS_CACHE", None)
    else:
        os.environ["WSIS_CACHE"] = before
