"""WISE pseudo masks (Algorithm 1, section 3.1): for each peak of a trained PRM classifier on a
training image, the proposals whose mask contains the peak are its candidates, and one is sampled
with probability proportional to objectness (Eq. 1); the pseudo instance takes the peak's class.

* Peaks: local maxima of the (sub-pixel upsampled) class response maps, as PRM finds them, of the
  image's **tagged** classes only (the tags are the training signal; a class score threshold would
  only drop true tags). Per class, peaks with a response above ``peak_threshold`` are kept, at
  most ``max_peaks_per_class``, strongest first; a tagged class with no peak above the threshold
  keeps its strongest peak, because the tag says the object is there.
* A peak at upsampled-CRM cell ``i`` sits at raw-CRM coordinate ``r = i (h - 1) / (H - 1)``
  (``align_corners`` upsampling from ``h`` to ``H`` cells), whose receptive-field centre in the
  original image of height ``Y`` is ``(r + 1/2) Y / h`` (:func:`peak_to_image`; same along x).
* Eq. 1 with objectness clamped at 0; candidates whose objectness sums to 0 are drawn uniformly.
  A peak that no proposal contains yields no pseudo instance.
* Resampling "as training proceeds": the draw of epoch ``e`` for image ``i`` uses a generator seeded
  by ``(seed, e, i)`` only, so every epoch sees new pseudo masks, and a resumed run the same ones.
  Two peaks of one class that draw the same proposal give one instance (identical duplicate
  targets would only double-count one object).
* Per image the candidate sets (peak -> candidate proposal indices + probabilities, and the candidate
  masks as RLE) are cached as JSON under ``cache_dir``, keyed by the image content, the proposal
  settings and the peak settings, so resampling costs no network pass and no proposal generation.

Options that are not in the paper (``pseudo.*``; all off in ``wise.yaml``, chosen on the training
images' own ground truth in ``benchmarks/results/wise.md``):

* ``candidates="retrieval"``: each peak's candidates are replaced by the single proposal PRM's
  *test stage* retrieves for it (Eq. 10's score, then PRM's instance NMS; :mod:`wsis.proposals.retrieval`),
  with peaks restricted to the image's tags as above. The draw then has one candidate per instance,
  so the pseudo masks are deterministic; the instance's score is the retrieval score.
* ``top_k``: Eq. 1 restricted to each peak's ``top_k`` most objectness-probable candidates
  (renormalised), so the draw never lands on a low-objectness proposal.
* ``peak_relative_threshold``: a peak is kept only if its class response reaches this fraction of
  the strongest peak of its class in the image (PRM's relative peak filter).
* ``nms_threshold``: per-class mask NMS among an image's pseudo instances (strongest peak first), so
  two peaks on one object do not give two overlapping targets.

Export (:func:`write_pseudo_labels`): a COCO instances json, either one draw (``mode="sample"``,
for a given seed and epoch) or each peak's most probable candidate (``mode="argmax"``: the proposal
of highest objectness containing the peak) -- what a detector outside this toolkit trains on.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from tqdm import tqdm

from wsis import masks as mask_ops
from wsis.cues.peaks import select_peak_indices
from wsis.data.coco import write_coco_gt
from wsis.data.images import atomic_write, load_image
from wsis.errors import InputError
from wsis.masks import RLE
from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache, file_sha1, settings_key
from wsis.structures import ImageRecord, Instances, RecordSet

SampleMode = Literal["sample", "argmax"]
_DECODE_CHUNK = 128  # proposals decoded at once when testing which contain the peaks (memory bound)


@dataclass
class PseudoLabelConfig:
    peak_threshold: float = 0.0
    max_peaks_per_class: int = 8
    # False: every epoch trains on the argmax pseudo masks instead of a fresh draw (an ablation).
    resample: bool = True
    # Not in the paper (module docstring): the candidate source and three selection filters.
    candidates: Literal["objectness", "retrieval"] = "objectness"
    top_k: int | None = None
    peak_relative_threshold: float | None = None
    nms_threshold: float | None = None

    def candidate_key(self) -> dict:
        """The settings the cached candidate sets depend on (the filters apply when drawing); the
        paper's keys are those of the runs before the options existed, so their caches stay valid."""
        key = {"peak_threshold": self.peak_threshold, "max_peaks_per_class": self.max_peaks_per_class,
               "resample": self.resample}
        if self.candidates != "objectness":
            key["candidates"] = self.candidates
        return key


@dataclass
class PeakCandidates:
    """The candidate proposals of each of the K peaks of one image (CSR layout).

    Peak k's candidates are ``masks[indices[offsets[k]:offsets[k+1]]]`` drawn with probabilities
    ``probs[offsets[k]:offsets[k+1]]`` (summing to 1); ``masks`` holds only proposals that are a
    candidate of some peak. ``classes`` are dataset category ids, ``points`` (y, x) original pixels.
    """

    image_id: int
    image_size: tuple[int, int]
    classes: np.ndarray
    points: np.ndarray
    values: np.ndarray
    offsets: np.ndarray
    indices: np.ndarray
    probs: np.ndarray
    masks: list[RLE]

    @property
    def num_peaks(self) -> int:
        return len(self.classes)

    def to_json(self) -> dict:
        return {"image_id": int(self.image_id), "image_size": list(self.image_size),
                "classes": self.classes.tolist(), "points": self.points.tolist(), "values": self.values.tolist(),
                "offsets": self.offsets.tolist(), "indices": self.indices.tolist(), "probs": self.probs.tolist(),
                "masks": [{"size": list(m["size"]), "counts": m["counts"].decode("ascii")
                           if isinstance(m["counts"], bytes) else m["counts"]} for m in self.masks]}

    @staticmethod
    def from_json(data: dict) -> "PeakCandidates":
        return PeakCandidates(
            int(data["image_id"]), tuple(data["image_size"]), np.asarray(data["classes"], np.int64),
            np.asarray(data["points"], np.int64).reshape(-1, 2), np.asarray(data["values"], np.float32),
            np.asarray(data["offsets"], np.int64), np.asarray(data["indices"], np.int64),
            np.asarray(data["probs"], np.float64), [mask_ops.compress(m) for m in data["masks"]])


# ---------------------------------------------------------------- geometry and Eq. 1

def peak_to_image(cells: np.ndarray, upsampled: tuple[int, int], raw: tuple[int, int],
                  image_size: tuple[int, int]) -> np.ndarray:
    """(K, 2) (y, x) cells of the upsampled CRM grid -> (K, 2) pixel (row, col) of the original image
    (formula in the module docstring)."""
    cells = np.asarray(cells, np.float64).reshape(-1, 2)
    up, lo, size = (np.asarray(v, np.float64) for v in (upsampled, raw, image_size))
    scale = np.where(up > 1, (lo - 1) / np.maximum(up - 1, 1), 0.0)
    centre = (cells * scale + 0.5) * size / lo
    return np.minimum(np.floor(centre), size - 1).astype(np.int64)


def objectness_probabilities(objectness: np.ndarray) -> np.ndarray:
    """Eq. 1: ``b_k / sum_j b_j`` with b clamped at 0; uniform when all are 0."""
    b = np.clip(np.asarray(objectness, np.float64), 0.0, None)
    total = b.sum()
    return b / total if total > 0 else np.full(len(b), 1.0 / max(len(b), 1))


def contains_points(masks: Sequence[RLE], points: np.ndarray) -> np.ndarray:
    """(N, K) bool: whether mask n contains pixel (y, x) = points[k]."""
    points = np.asarray(points, np.int64).reshape(-1, 2)
    out = np.zeros((len(masks), len(points)), bool)
    for start in range(0, len(masks), _DECODE_CHUNK):
        chunk = mask_ops.decode_many(masks[start:start + _DECODE_CHUNK])
        out[start:start + len(chunk)] = chunk[:, points[:, 0], points[:, 1]]
    return out


def build_candidates(image_id: int, proposals: Proposals, classes: np.ndarray, points: np.ndarray,
                     values: np.ndarray) -> PeakCandidates:
    """Each peak's candidates: the proposals containing it, with Eq. 1 probabilities."""
    h, w = proposals.image_size
    if proposals.masks is None:
        raise InputError("proposals", "WISE needs mask proposals (box-only proposals give no pseudo masks)")
    inside = contains_points(proposals.masks, points)  # (N, K)
    per_peak = [np.flatnonzero(inside[:, k]) for k in range(len(points))]
    used = np.unique(np.concatenate(per_peak)) if per_peak else np.zeros(0, np.int64)
    local = np.full(len(proposals), -1, np.int64)
    local[used] = np.arange(len(used))
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in per_peak])]).astype(np.int64)
    indices = np.concatenate([local[p] for p in per_peak]) if per_peak else np.zeros(0, np.int64)
    probs = (np.concatenate([objectness_probabilities(proposals.objectness[p]) for p in per_peak])
             if per_peak else np.zeros(0))
    return PeakCandidates(int(image_id), (h, w), np.asarray(classes, np.int64), np.asarray(points, np.int64),
                          np.asarray(values, np.float32), offsets, indices.astype(np.int64), probs,
                          [proposals.masks[i] for i in used])


# ---------------------------------------------------------------- drawing pseudo masks

def choose(offsets: np.ndarray, probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per peak: for peak k with uniform ``u[k]`` in [0, 1), the position (into
    ``probs``) of the first candidate whose cumulative probability within the peak exceeds ``u[k]``.
    Peaks without candidates are skipped, so the result has one entry per peak with candidates."""
    offsets = np.asarray(offsets, np.int64)
    counts = np.diff(offsets)
    has = counts > 0
    cum = np.cumsum(probs)
    before = np.concatenate([[0.0], cum])[offsets[:-1]]
    pos = np.searchsorted(cum, before + np.asarray(u, np.float64), side="right")
    # Rounding can push the target past the peak's last candidate: clamp into the peak's range.
    return np.clip(pos, offsets[:-1], offsets[1:] - 1)[has]


def most_probable(offsets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per peak with candidates, the position of its most probable candidate (first on ties)."""
    offsets = np.asarray(offsets, np.int64)
    out = []
    for k in np.flatnonzero(np.diff(offsets) > 0):
        out.append(offsets[k] + int(np.argmax(probs[offsets[k]:offsets[k + 1]])))
    return np.asarray(out, np.int64)


def sample_positions(cands: PeakCandidates, seed: int, epoch: int) -> np.ndarray:
    """Positions into ``cands.indices`` drawn for ``(seed, epoch)`` (one per peak with candidates)."""
    u = np.random.default_rng([int(seed), int(epoch), int(cands.image_id)]).random(cands.num_peaks)
    return choose(cands.offsets, cands.probs, u)


def restrict_top_k(offsets: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """``probs`` with each peak's candidates outside its ``k`` most probable set to 0 and the rest
    renormalised (ties: the first candidates)."""
    out = np.zeros_like(np.asarray(probs, np.float64))
    for a, b in zip(offsets[:-1], offsets[1:]):
        if b > a:
            top = a + np.argsort(-probs[a:b], kind="stable")[:k]
            total = probs[top].sum()
            out[top] = probs[top] / total if total > 0 else 1.0 / len(top)
    return out


def relative_peak_keep(classes: np.ndarray, values: np.ndarray, relative: float) -> np.ndarray:
    """(K,) bool: peaks whose value reaches ``relative`` times the strongest peak of their class."""
    keep = np.zeros(len(classes), bool)
    for c in np.unique(classes):
        members = classes == c
        keep |= members & (values >= relative * values[members].max())
    return keep


def class_mask_nms(masks: Sequence[RLE], classes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Sorted indices kept by per-class greedy mask NMS (highest score first; stable on ties):
    an instance is dropped when its mask IoU with a kept one of its class exceeds ``threshold``."""
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    kept: list[int] = []
    for i in order:
        same = [j for j in kept if classes[j] == classes[i]]
        if same and mask_ops.iou([masks[i]], [masks[j] for j in same]).max() > threshold:
            continue
        kept.append(int(i))
    return np.sort(np.asarray(kept, np.int64))


def pseudo_instances(cands: PeakCandidates, mode: SampleMode = "sample", seed: int = 0, epoch: int = 0,
                     cfg: PseudoLabelConfig | None = None) -> Instances:
    """The pseudo instances of one image: a draw (``sample``) or the most probable candidates, with
    ``cfg``'s selection filters (top_k, peak_relative_threshold, nms_threshold) when given."""
    probs = cands.probs
    if cfg is not None and cfg.top_k:
        probs = restrict_top_k(cands.offsets, probs, cfg.top_k)
    if mode == "sample":
        u = np.random.default_rng([int(seed), int(epoch), int(cands.image_id)]).random(cands.num_peaks)
        pos = choose(cands.offsets, probs, u)
    else:
        pos = most_probable(cands.offsets, probs)
    peak_of = np.repeat(np.arange(cands.num_peaks), np.diff(cands.offsets))[pos]
    if cfg is not None and cfg.peak_relative_threshold:
        ok = relative_peak_keep(cands.classes, cands.values, cfg.peak_relative_threshold)[peak_of]
        pos, peak_of = pos[ok], peak_of[ok]
    pairs = np.stack([cands.classes[peak_of], cands.indices[pos]], axis=1)
    _, first = np.unique(pairs, axis=0, return_index=True)
    keep = np.sort(first)
    chosen = [cands.masks[i] for i in cands.indices[pos][keep]]
    classes, values = cands.classes[peak_of][keep], cands.values[peak_of][keep]
    if cfg is not None and cfg.nms_threshold is not None and len(chosen) > 1:
        kept = class_mask_nms(chosen, classes, values, cfg.nms_threshold)
        chosen, classes, values = [chosen[i] for i in kept], classes[kept], values[kept]
    return Instances(cands.image_size, mask_ops.to_bbox(chosen), classes, values, chosen)


# ---------------------------------------------------------------- peaks of a trained PRM

class PseudoLabeler:
    """Candidate sets of training images from a trained PRM predictor and a proposal method."""

    def __init__(self, predictor, proposal_method: str, proposal_settings: dict, proposal_cache: ProposalCache,
                 cfg: PseudoLabelConfig, cache_dir: str | Path) -> None:
        self.predictor = predictor
        self.method, self.settings = proposal_method, dict(proposal_settings)
        self.proposal_cache = proposal_cache
        self.cfg = cfg
        self.cache_dir = Path(cache_dir)
        self._channel = {c: i for i, c in enumerate(predictor.category_ids)}

    @torch.no_grad()
    def peaks(self, record: ImageRecord, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(category ids (K,), original-image points (K, 2), CRM values (K,)) of the image's tagged classes."""
        model = self.predictor.model
        crm = model.crm(self.predictor.prepare(image))
        found, values = model.find_peaks(crm)
        tagged = torch.zeros(crm.shape[1], dtype=torch.bool)
        tagged[[self._channel[t] for t in record.tags if t in self._channel]] = True
        keep = select_peak_indices(found[:, 1], values, tagged, self.cfg.peak_threshold,
                                   self.cfg.max_peaks_per_class, keep_strongest=True).cpu().numpy()
        found, values = found[:, 1:].cpu().numpy(), values.cpu().numpy()
        up = tuple(crm.shape[-2:])
        raw = (up[0] // model.sub_pixel_factor, up[1] // model.sub_pixel_factor)
        points = peak_to_image(found[keep, 1:], up, raw, image.shape[:2])
        classes = np.asarray(self.predictor.category_ids, np.int64)[found[keep, 0]]
        return classes, points, values[keep]

    def retrieved(self, record: ImageRecord, image: np.ndarray, proposals: Proposals) -> PeakCandidates:
        """PRM's test stage on a training image, its peaks restricted to the tagged classes: one
        candidate (probability 1) per retrieved instance; ``points`` are the peaks' cells mapped to
        the image and ``values`` the retrieval scores."""
        from wsis.proposals.retrieval import retrieve  # PRM's stage; only this option needs it

        if proposals.masks is None:
            raise InputError("proposals", "WISE needs mask proposals (box-only proposals give no pseudo masks)")
        predictor = self.predictor
        tagged = np.zeros(len(predictor.category_ids), bool)
        tagged[[self._channel[t] for t in record.tags if t in self._channel]] = True
        saved = predictor._thresholds
        # the tags replace the class scores' thresholds: every tagged class passes, no other does
        predictor._thresholds = torch.from_numpy(np.where(tagged, -np.inf, np.inf).astype(np.float32))
        try:
            x = predictor.prepare(image)
            classes, prms, class_maps = predictor.peak_responses(x)
        finally:
            predictor._thresholds = saved
        h, w = image.shape[:2]
        s = x.shape[-1]
        if len(classes) and len(proposals):
            small = mask_ops.decode_resized(proposals.masks, proposals.image_size, s, s)
            found = retrieve(prms, classes, class_maps, small, predictor.cfg.test.retrieval)
        else:
            found = None
        n = 0 if found is None else len(found.proposal_index)
        index = np.zeros(0, np.int64) if found is None else np.asarray(found.proposal_index, np.int64)
        peak_cls = np.zeros(0, np.int64) if found is None else np.asarray(found.peak_classes, np.int64)
        scores = np.zeros(0, np.float32) if found is None else np.asarray(found.scores, np.float32)
        # a peak's location: the maximum of its merged response map, in image pixels
        points = np.zeros((n, 2), np.int64)
        if n:
            flat = found.prms.reshape(n, -1).argmax(1)
            points = np.stack([flat // s * h // s, flat % s * w // s], 1).astype(np.int64)
        used, local = np.unique(index, return_inverse=True)
        return PeakCandidates(int(record.image_id), (h, w),
                              np.asarray(predictor.category_ids, np.int64)[peak_cls] if n else np.zeros(0, np.int64),
                              points, scores, np.arange(n + 1, dtype=np.int64), local.astype(np.int64),
                              np.ones(n), [proposals.masks[i] for i in used])

    def _key(self, record: ImageRecord) -> str:
        parts = [file_sha1(record.path), settings_key(self.method, self.settings),
                 json.dumps(self.cfg.candidate_key(), sort_keys=True)]
        return hashlib.sha1("|".join(parts).encode()).hexdigest()

    def candidates(self, record: ImageRecord) -> PeakCandidates:
        """The image's candidate sets, from the cache when its key matches, else computed and cached."""
        # each candidate source its own folder, so switching between them does not evict the other
        folder = self.cache_dir if self.cfg.candidates == "objectness" else self.cache_dir / self.cfg.candidates
        path = folder / f"{record.image_id}.json"
        key = self._key(record)
        if path.is_file():
            try:
                data = json.loads(path.read_text())
                if data.get("key") == key:
                    return PeakCandidates.from_json(data)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                pass  # a foreign or damaged file is recomputed
        image = load_image(record.path)
        proposals = self.proposal_cache.get_or_compute(record.path, self.method, **self.settings)
        if self.cfg.candidates == "retrieval":
            cands = self.retrieved(record, image, proposals)
        else:
            classes, points, values = self.peaks(record, image)
            cands = build_candidates(record.image_id, proposals, classes, points, values)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            json.dump({"key": key, **cands.to_json()}, f)
        return cands

    def all_candidates(self, records: Sequence[ImageRecord], progress: bool = True) -> dict[int, PeakCandidates]:
        return {r.image_id: self.candidates(r)
                for r in tqdm(list(records), desc="pseudo labels", unit="img", disable=not progress)}


# ---------------------------------------------------------------- export

def pseudo_recordset(records: RecordSet, candidates: dict[int, PeakCandidates], mode: SampleMode = "sample",
                     seed: int = 0, epoch: int = 0, cfg: PseudoLabelConfig | None = None) -> RecordSet:
    """The records with their pseudo instances as ground truth (tags kept)."""
    out = []
    for r in records:
        inst = pseudo_instances(candidates[r.image_id], mode, seed, epoch, cfg)
        out.append(ImageRecord(r.image_id, r.path, r.width, r.height, tags=r.tags, gt=inst, file_name=r.file_name))
    return RecordSet(out, dict(records.categories), name=f"{records.name} WISE pseudo labels ({mode})".strip())


def write_pseudo_labels(records: RecordSet, candidates: dict[int, PeakCandidates], path: str | Path,
                        mode: SampleMode = "sample", seed: int = 0, epoch: int = 0,
                        cfg: PseudoLabelConfig | None = None) -> RecordSet:
    """Write the pseudo labels as a COCO instances json (RLE masks) and return them as records."""
    if mode not in ("sample", "argmax"):
        raise InputError("mode", f"must be 'sample' or 'argmax', not {mode!r}")
    pseudo = pseudo_recordset(records, candidates, mode, seed, epoch, cfg)
    write_coco_gt(pseudo, path)
    return pseudo
