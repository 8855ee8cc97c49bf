"""What every method shares: the :class:`Method` protocol of its entry module (``fit`` / ``load``),
the :class:`Predictor` base (device, categories, the proposal cache, ``predict_records``) and the
registry that ``@register(name)`` fills.

The command line lists and validates names from the static table :data:`wsis.methods.METHODS`
(name -> entry module) without importing torch; a test checks that table against the
registrations, so a method is added by writing its package, decorating its predictor and adding
one line to the table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol, Sequence, TypeVar

import numpy as np
from tqdm import tqdm

from wsis.engine import pick_device
from wsis.errors import warn
from wsis.proposals import Proposals
from wsis.structures import ImageRecord, Instances, RecordSet

REGISTRY: dict[str, type["Predictor"]] = {}

P = TypeVar("P", bound=type["Predictor"])


class Method(Protocol):
    """A method's entry module (``wsis.methods.<name>``)."""

    def fit(self, records: RecordSet, config: str | Path | None = None, overrides: Sequence[str] = (),
            workdir: str | Path = ...) -> "Predictor": ...

    def load(self, workdir: str | Path, overrides: Sequence[str] = ()) -> "Predictor":
        """The trained predictor, with ``key=value`` overrides of its inference settings
        (:attr:`Predictor.inference_keys`)."""
        ...


def register(name: str, config: type) -> Callable[[P], P]:
    """Class decorator: ``name``'s predictor (its module is the method's entry module) and the
    dataclass of the method's config."""
    def wrap(cls: P) -> P:
        if name in REGISTRY and REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} registered twice ({REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.method = name
        cls.config_class = config
        REGISTRY[name] = cls
        return cls
    return wrap


class Predictor:
    """A trained method on one device: ``predict(record) -> Instances`` (subclasses) and
    ``predict_records``. ``cfg`` is the method's config; its ``proposals`` section (a
    :class:`~wsis.proposals.config.ProposalConfig`) names the proposals and their cache, by default
    ``<workdir>/proposals``."""

    method: ClassVar[str] = ""
    config_class: ClassVar[type]
    # Config keys (or sections) that act at prediction only: ``wsis predict`` may override these and
    # no others (a training setting changed after training would describe a model that does not exist).
    inference_keys: ClassVar[tuple[str, ...]] = ("device", "proposals")

    def __init__(self, cfg: Any, category_ids: Sequence[int], categories: dict[int, str],
                 workdir: str | Path) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.category_ids = [int(c) for c in category_ids]
        self.categories = dict(categories)
        self.proposal_cache = cfg.proposals.cache(workdir)

    def proposals(self, record: ImageRecord) -> Proposals:
        """The record's proposals, from the cache when they were computed before."""
        return self.cfg.proposals.get(self.proposal_cache, record.path)

    def labels_of(self, channels: np.ndarray) -> np.ndarray:
        """Dataset category ids of 0-based output channels."""
        return np.asarray(self.category_ids, np.int64)[channels] if len(channels) else np.zeros(0, np.int64)

    def predict(self, record: ImageRecord, image: np.ndarray | None = None) -> Instances:
        raise NotImplementedError

    def predict_records(self, records: RecordSet | Sequence[ImageRecord], progress: bool = True
                        ) -> dict[int, Instances]:
        """``predict`` of every record; when nothing is found anywhere, one warning line says why
        (:meth:`why_empty`)."""
        out = {r.image_id: self.predict(r)
               for r in tqdm(list(records), desc=f"predict {self.method}", disable=not progress, unit="img")}
        if out and not any(len(p) for p in out.values()):
            warn(f"no instance on any of the {len(out)} image(s): {self.why_empty(list(out))}")
        return out

    def why_empty(self, image_ids: Sequence[int]) -> str:
        """Why the images ``image_ids`` got no instance (methods say which threshold stopped them)."""
        return "nothing passed the method's thresholds"
