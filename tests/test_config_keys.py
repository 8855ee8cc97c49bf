"""No dead config keys: every field a method's config accepts is read when the method trains and
predicts (a key that is accepted but never read silently does nothing), and no field name repeats
at two levels of one method's config (``prm.prm.epochs``, ``peak_threshold`` beside
``classifier.peak_threshold``: which one counts?)."""
from __future__ import annotations

import dataclasses
import typing
from contextlib import contextmanager

import pytest
import torch

from wsis.methods import METHODS, get_method

torch.set_num_threads(1)


# ---------------------------------------------------------------- reads of a config, recorded

class _Reads:
    def __init__(self) -> None:
        self.paths: set[str] = set()
        self.paused = 0


def _fields(cls: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_type(tp: typing.Any) -> type | None:
    """The dataclass in a field's type (``X``, ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def all_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of a config class."""
    out = []
    for name, tp in _fields(cls).items():
        sub = _dataclass_type(tp)
        out += all_fields(sub, f"{prefix}{name}.") if sub else [prefix + name]
    return out


def _track(obj: typing.Any, reads: _Reads, prefix: str = "") -> typing.Any:
    """``obj`` (a config dataclass) made to record ``reads`` of its fields, nested ones included."""
    cls = type(obj)
    names = {f.name for f in dataclasses.fields(cls)}

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        if name in names and not reads.paused and not dataclasses.is_dataclass(value):
            reads.paths.add(prefix + name)
        return value

    obj.__class__ = type(cls.__name__, (cls,), {"__getattribute__": getattribute})
    for name in names:
        value = object.__getattribute__(obj, name)
        if dataclasses.is_dataclass(value):
            _track(value, reads, f"{prefix}{name}.")
    return obj


@contextmanager
def recording(monkeypatch, module, reads: _Reads, stages: dict | None = None):
    """``module.load_config`` returns recorded configs; copying a whole config (``asdict`` for
    ``method.json``, ``replace``) is not a read. ``stages``: ``{module: prefix}`` of methods a method
    trains as a stage from a config it writes (WISE's PRM), whose reads count under ``prefix``."""
    load = module.load_config

    def tracked_load(*args, **kwargs):
        return _track(load(*args, **kwargs), reads)

    for stage_module, prefix in (stages or {}).items():
        stage_load = stage_module.load_config
        monkeypatch.setattr(stage_module, "load_config",
                            lambda *a, _load=stage_load, _prefix=prefix, **k: _track(_load(*a, **k), reads, _prefix))

    def paused(fn):
        def call(*args, **kwargs):
            reads.paused += 1
            try:
                return fn(*args, **kwargs)
            finally:
                reads.paused -= 1
        return call

    monkeypatch.setattr(module, "load_config", tracked_load)
    monkeypatch.setattr(dataclasses, "asdict", paused(dataclasses.asdict))
    monkeypatch.setattr(dataclasses, "replace", paused(dataclasses.replace))
    yield


def _scenes(tmp_path, n=4):
    from wsis.data.synthetic import make_scenes

    return make_scenes(tmp_path / "data", num_images=n, seed=3, image_size=(64, 64))


# Tiny, fast settings; every peak kept so that the scoring stage runs.
PRM_TINY = ["model.backbone=tf_efficientnet_lite0", "model.pretrained=false", "schedule.epochs=1", "data.image_size=64",
            "schedule.batch_size=4", "model.sub_pixel_factor=2", "test.class_threshold=-1000000000.0",
            "test.peak_threshold=-1000000000.0", "test.max_peaks_per_class=2", "device=cpu", "proposals.method=superpixel"]


def _assert_all_read(cls: type, reads: _Reads, unused_by_design: set[str] = frozenset()) -> None:
    dead = sorted(set(all_fields(cls)) - reads.paths - set(unused_by_design))
    assert not dead, f"{cls.__name__} accepts config keys that are never read: {', '.join(dead)}"


@pytest.mark.slow  # ~20 s on the shared 2-core machine
def test_every_prm_key_is_read(tmp_path, monkeypatch):
    import wsis.methods.prm as prm

    reads = _Reads()
    records = _scenes(tmp_path)
    with recording(monkeypatch, prm, reads):
        predictor = prm.fit(records, overrides=PRM_TINY, workdir=tmp_path / "run")
        predictor.predict_records(records, progress=False)
        # the frozen/cached-backbone path reads the fit.* keys (and not the backbone's schedule)
        frozen = ["model.frozen_backbone=true", "model.class_prior=imagenet", "calibration.thresholds=calibrated",
                  "schedule.epochs=1", "calibration.folds=2", "calibration.min_positives=1"]
        predictor = prm.fit(records, overrides=PRM_TINY + frozen, workdir=tmp_path / "frozen")
        predictor.predict_records(records, progress=False)
        # the IoU retrieval score reads its support keys (Eq. 10's are read above)
        predictor.cfg.test.retrieval.score = "iou"
        predictor.predict_records(records, progress=False)
        # the class-map fill reads its keys only when it is on
        predictor.cfg.test.fill.per_class = 2
        predictor.predict_records(records, progress=False)
    _assert_all_read(prm.PRMMethodConfig, reads)


@pytest.mark.slow  # ~60 s on the shared 2-core machine
@pytest.mark.parametrize("scoring", ["sgpo", "prm"])
def test_every_mser_sgpo_key_is_read(tmp_path, monkeypatch, scoring):
    import wsis.methods.mser_sgpo as mser

    reads = _Reads()
    records = _scenes(tmp_path)
    overrides = PRM_TINY + ["erasing.stages=2", f"test.scoring={scoring}", "test.fusion=match"]
    with recording(monkeypatch, mser, reads):
        predictor = mser.fit(records, overrides=overrides, workdir=tmp_path / "run")
        predictor.predict_records(records, progress=False)
        predictor.cfg.test.fill.per_class = 2  # the class-map fill reads its keys only when it is on
        predictor.predict_records(records, progress=False)
        # the photo recipe's stages (frozen backbone, cached erased-image features) read PRM's fit keys
        frozen = ["model.frozen_backbone=true", "model.class_prior=imagenet", "calibration.thresholds=calibrated",
                  "calibration.folds=2", "calibration.min_positives=1", f"data.feature_cache={tmp_path / 'features'}"]
        mser.fit(records, overrides=overrides + frozen, workdir=tmp_path / "frozen").predict_records(records, progress=False)
    # each scoring rule reads its own part of the one scoring config; the two runs together read all
    # retrieval.score=iou's support keys are PRM's alternative to Eq. 10, read in test_every_prm_key_is_read
    iou = {"test.retrieval.support_threshold", "test.retrieval.support_sigma"}
    only = {"sgpo": {"test.retrieval.bg_threshold_factor", "test.retrieval.proposal_count"} | iou,
            "prm": {"test.retrieval.omega", "test.retrieval.class_irrelevant", "test.retrieval.saliency"} | iou}
    _assert_all_read(mser.MSERSGPOConfig, reads, only[scoring])


DETECTOR_TINY = ["model.pretrained=false", "data.min_size=64", "data.max_size=64", "model.rpn_pre_nms_top_n_train=100",
                 "model.rpn_post_nms_top_n_train=50", "test.rpn_pre_nms_top_n_test=100", "test.rpn_post_nms_top_n_test=50",
                 "model.box_batch_size_per_image=32", "device=cpu", "schedule.iterations=2", "schedule.batch_size=2",
                 "schedule.grad_clip=10", "test.refine=true", "test.score_threshold=0.0",
                 "proposals.method=superpixel", "proposals.settings={max_side: 64, max_proposals: 30}"]


@pytest.mark.slow  # ~15 s
def test_every_maskrcnn_key_is_read(tmp_path, monkeypatch):
    import wsis.methods.maskrcnn as maskrcnn

    reads = _Reads()
    records = _scenes(tmp_path)
    with recording(monkeypatch, maskrcnn, reads):
        maskrcnn.fit(records, overrides=DETECTOR_TINY, workdir=tmp_path / "run").predict_records(records, progress=False)
    # the length in epochs is read (schedule_length) but null here; num_workers is the data loader's
    _assert_all_read(maskrcnn.MaskRCNNMethodConfig, reads)


@pytest.mark.slow  # ~30 s
def test_every_wise_key_is_read(tmp_path, monkeypatch):
    import wsis.methods.prm as prm
    import wsis.methods.wise as wise

    reads = _Reads()
    records = _scenes(tmp_path)
    overrides = DETECTOR_TINY + ["prm.model.pretrained=false", "prm.data.image_size=64", "prm.schedule.epochs=1",
                                 "prm.schedule.batch_size=4", "prm.model.sub_pixel_factor=2",
                                 "pseudo.max_peaks_per_class=2"]
    with recording(monkeypatch, wise, reads, stages={prm: "prm."}):
        wise.fit(records, overrides=overrides, workdir=tmp_path / "run").predict_records(records, progress=False)
        # the PRM stage's photo recipe (frozen cached backbone) reads the rest of prm.model / prm.data
        frozen = ["prm.model.frozen_backbone=true", "prm.model.class_prior=imagenet", "schedule.iterations=1"]
        wise.fit(records, overrides=overrides + frozen, workdir=tmp_path / "frozen")
    # the PRM stage's own sections beyond WISE's prm.{model,data,schedule} are not WISE's keys
    _assert_all_read(wise.WiseMethodConfig, reads)


@pytest.mark.slow  # ~20 s
def test_every_pdsl_key_is_read(tmp_path, monkeypatch):
    import wsis.methods.pdsl as pdsl
    from test_pdsl import TINY

    reads = _Reads()
    records = _scenes(tmp_path)
    with recording(monkeypatch, pdsl, reads):
        pdsl.fit(records, overrides=TINY + ["schedule.iterations=2", "schedule.grad_clip=5"],
                 workdir=tmp_path / "run").predict_records(records, progress=False)
    _assert_all_read(pdsl.PDSLMethodConfig, reads)


@pytest.mark.slow  # ~30 s
def test_every_dasnet_key_is_read(tmp_path, monkeypatch):
    import wsis.methods.dasnet as dasnet

    reads = _Reads()
    records = _scenes(tmp_path)
    tiny = ["model.detector.pretrained=false", "data.size=64", "device=cpu", "data.masks_for=2",
            "model.segmentation.top_layers=1", "model.segmentation.top_channels=8"] + [
        f"schedule.{s}.{k}" for s in ("detection", "semantic", "instance")
        for k in ("iterations=2", "batch_size=2", "grad_clip=10", "lr_steps=[1]", "warmup_iterations=1")]
    with recording(monkeypatch, dasnet, reads):
        predictor = dasnet.fit(records, overrides=tiny, workdir=tmp_path / "run")
        predictor.predict_records(records, progress=False)
        # the detector of a finished run, reused instead of training stage 1 again
        reuse = tiny + [f"model.detector.weights={tmp_path / 'run' / 'detector' / 'model.pt'}"]
        dasnet.fit(records, overrides=reuse, workdir=tmp_path / "reuse")
    _assert_all_read(dasnet.DASNetConfig, reads)


@pytest.mark.slow  # ~60 s on the shared 2-core machine
def test_every_labelpenet_key_is_read(tmp_path, monkeypatch):
    import wsis.cues.crf as crf
    import wsis.methods.labelpenet as labelpenet
    from test_labelpenet import TINY, _schedules

    reads = _Reads()
    records = _scenes(tmp_path, n=3)
    # the backbone is unfrozen in forward-backward learning (model.train_backbone_curriculum), and
    # the segmentation module's predictions are refined by the CRF (test.refine_masks)
    overrides = TINY + _schedules(1, 2) + ["model.train_backbone_curriculum=true", "test.refine_masks=false"]
    with recording(monkeypatch, labelpenet, reads):
        predictor = labelpenet.fit(records, overrides=overrides, workdir=tmp_path / "run")
        for module in ("classification", "detection", "refinement", "segmentation"):
            predictor.predict(records[0], module=module)
        predictor.cfg.test.refine_masks = True
        predictor.predict(records[0], module="segmentation")
    unused = set()
    if not crf.crf_available():  # the CRF's kernels are read only where pydensecrf runs
        unused = {f"crf.{k}" for k in ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb",
                                      "bilateral_compat")}
    _assert_all_read(labelpenet.LabelPENetConfig, reads, unused)


# ---------------------------------------------------------------- one name, one level

def _config_class(name: str) -> type:
    from wsis.methods.base import REGISTRY

    get_method(name)
    return REGISTRY[name].config_class


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _encloses(outer: str, inner: str) -> bool:
    return outer != inner and (outer == "" or inner.startswith(outer + "."))


# A stage of a multi-stage method (WISE's ``prm``) is itself laid out in the skeleton's sections, so
# these section names may repeat under it; the fields inside them may not.
SKELETON_SECTIONS = {"model", "data", "schedule", "proposals", "test"}


def repeated_names(cls: type) -> dict[str, list[str]]:
    """Field (or section) names that occur both in a section and in a section nested in it (the root
    included) -> their dotted paths: ``prm.prm``, ``device`` beside ``prm.device``."""
    where: dict[str, list[str]] = {}
    sections = [p for p in _section_paths(cls) if p.rsplit(".", 1)[-1] not in SKELETON_SECTIONS]
    for path in all_fields(cls) + sections:
        where.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    return {n: sorted(p) for n, p in where.items()
            if any(_encloses(_parent(a), _parent(b)) for a in p for b in p)}


def _section_paths(cls: type, prefix: str = "") -> list[str]:
    out = []
    for name, tp in _fields(cls).items():
        sub = _dataclass_type(tp)
        if sub:
            out += [prefix + name] + _section_paths(sub, f"{prefix}{name}.")
    return out


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_field_name_at_two_levels(name):
    repeats = repeated_names(_config_class(name))
    assert not repeats, f"{name}: field names at two levels: {repeats}"


@dataclasses.dataclass
class _Inner:
    epochs: int = 1


@dataclasses.dataclass
class _Other:
    epochs: int = 3


@dataclasses.dataclass
class _Outer:
    epochs: int = 2
    inner: _Inner = dataclasses.field(default_factory=_Inner)


@dataclasses.dataclass
class _Siblings:
    a: _Inner = dataclasses.field(default_factory=_Inner)
    b: _Other = dataclasses.field(default_factory=_Other)


@dataclasses.dataclass
class _Stage:
    schedule: _Inner = dataclasses.field(default_factory=_Inner)


@dataclasses.dataclass
class _TwoStages:
    schedule: _Other = dataclasses.field(default_factory=_Other)
    first: _Stage = dataclasses.field(default_factory=_Stage)
    epochs: int = 0


def test_repeat_check_catches_a_nested_copy_and_allows_siblings():
    assert repeated_names(_Outer) == {"epochs": ["epochs", "inner.epochs"]}
    assert repeated_names(_Siblings) == {}  # a.epochs and b.epochs: two sections, each its own
    # a stage's own skeleton sections are allowed (first.schedule beside schedule), a leaf above is not
    assert repeated_names(_TwoStages) == {"epochs": ["epochs", "first.schedule.epochs", "schedule.epochs"]}
