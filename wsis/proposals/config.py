"""The ``proposals`` section every method's config shares: which generator, its settings, and where
its on-disk cache lives."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache, default_cache_root


@dataclass
class ProposalConfig:
    method: str = "superpixel"
    settings: dict = field(default_factory=dict)
    cache_dir: str | None = None  # default: the cache every method and run shares

    def cache_path(self, workdir: str | Path) -> Path:
        """The cache folder: ``cache_dir`` when given, else the shared one
        (:func:`~wsis.proposals.cache.default_cache_root`): entries are keyed by image content,
        generator and settings, so methods and runs reuse each other's proposals. ``workdir`` is
        not used for the default (kept for the callers' signature)."""
        return Path(self.cache_dir) if self.cache_dir else default_cache_root()

    def cache(self, workdir: str | Path) -> ProposalCache:
        return ProposalCache(self.cache_path(workdir))

    def get(self, cache: ProposalCache, image_path: str | Path) -> Proposals:
        """The proposals of one image from ``cache``, computed and stored when missing."""
        return cache.get_or_compute(image_path, self.method, **self.settings)
