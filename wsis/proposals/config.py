"""The ``proposals`` section every method's config shares: which generator, its settings, and where
its on-disk cache lives."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache


@dataclass
class ProposalConfig:
    method: str = "superpixel"
    settings: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default: <workdir>/proposals

    def cache_path(self, workdir: str | Path) -> Path:
        """The cache folder: ``cache_dir`` when given, else ``<workdir>/proposals``."""
        return Path(self.cache_dir) if self.cache_dir else Path(workdir) / "proposals"

    def cache(self, workdir: str | Path) -> ProposalCache:
        return ProposalCache(self.cache_path(workdir))

    def get(self, cache: ProposalCache, image_path: str | Path) -> Proposals:
        """The proposals of one image from ``cache``, computed and stored when missing."""
        return cache.get_or_compute(image_path, self.method, **self.settings)
