"""The speed levers of issue 15 give the same answers as the code they replace."""
import os
import time

import numpy as np
import pytest
import torch

from wsis import masks as mask_ops
from wsis.engine.parallel import predict_parallel
from wsis.proposals import Proposals
from wsis.proposals.cache import ProposalCache, default_cache_root
from wsis.proposals.config import ProposalConfig
from wsis.proposals.precomputed import read_npz, write_npz
from wsis.proposals.retrieval import chunked_products


def _blobs(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """n masks of random rectangles and discs (the shapes proposals have)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((n, h, w), bool)
    for i in range(n):
        cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(1, max(2, min(h, w) // 2))
        out[i] = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        out[i, y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] ^= True
    return out


@pytest.mark.parametrize("size,out", [((37, 53), (64, 64)), ((120, 90), (48, 64)), ((5, 7), (5, 7)), ((64, 64), (17, 9))])
def test_decode_resized_equals_decode_then_resize(size, out):
    masks = _blobs(70, *size)  # more than one chunk of 64
    rles = mask_ops.encode_many(masks)
    got = mask_ops.decode_resized(rles, size, *out)
    assert got.shape == (70,) + out and got.dtype == bool
    np.testing.assert_array_equal(got, mask_ops.resize_nearest(masks, *out))
    assert mask_ops.decode_resized([], size, *out).shape == (0,) + out


def test_decode_resized_by_hand():
    # a 2x4 mask [[1 1 0 0], [0 0 1 1]] halved in width: nearest-exact picks columns 0 and 2
    m = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    got = mask_ops.decode_resized(mask_ops.encode_many(m[None]), (2, 4), 2, 2)[0]
    assert got.tolist() == [[True, False], [False, True]]


def test_chunked_products_against_float64_sums():
    rng = np.random.default_rng(1)
    masks = rng.random((150, 30, 20)) < 0.3  # 150 masks: three chunks, the last one partial
    maps = rng.random((3, 30, 20)).astype(np.float32)
    want = np.einsum("khw,phw->kp", maps.astype(np.float64), masks.astype(np.float64))
    got = chunked_products(maps, masks)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # by hand: a map of ones counts the mask's pixels
    np.testing.assert_allclose(chunked_products(np.ones((1, 30, 20), np.float32), masks)[0], masks.sum(axis=(1, 2)))


def test_npz_round_trip_keeps_masks_and_reads_the_old_layout(tmp_path):
    masks = _blobs(12, 31, 17)
    props = Proposals((31, 17), masks=mask_ops.encode_many(masks), objectness=np.linspace(1, 0, 12))
    write_npz(tmp_path / "p.npz", props)
    back = read_npz(tmp_path / "p.npz")
    np.testing.assert_array_equal(back.mask_array(), masks)
    np.testing.assert_allclose(back.objectness, props.objectness)
    # the previous layout (one str array) is still read
    np.savez_compressed(tmp_path / "old.npz", boxes=props.boxes, scores=props.objectness,
                        image_size=np.asarray([31, 17]), rle_counts=np.asarray([m["counts"] for m in props.masks]))
    np.testing.assert_array_equal(read_npz(tmp_path / "old.npz").mask_array(), masks)


def test_shared_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("WSIS_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c" / "proposals"
    assert ProposalConfig().cache(tmp_path / "run").root == tmp_path / "c" / "proposals"
    assert ProposalConfig(cache_dir=str(tmp_path / "mine")).cache(tmp_path / "run").root == tmp_path / "mine"
    monkeypatch.delenv("WSIS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "wsis" / "proposals"


def test_second_method_reuses_the_first_ones_proposals(tmp_path):
    """Two predictors asking for the same image and settings: computed once (the second call only
    reads), whatever the workdir."""
    from wsis.data.images import write_png

    image = (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "a.png", image)
    first, second = ProposalCache(tmp_path / "shared"), ProposalCache(tmp_path / "shared")
    a = first.get_or_compute(tmp_path / "a.png", "superpixel")
    entry = first.entry(tmp_path / "a.png", "superpixel")
    stamp = entry.stat().st_mtime_ns
    b = second.get_or_compute(tmp_path / "a.png", "superpixel")
    assert entry.stat().st_mtime_ns == stamp  # not rewritten
    assert [m["counts"] for m in a.masks] == [m["counts"] for m in b.masks]


class _Echo:
    """A picklable stand-in predictor: the answer is known (image id doubled) and says which process.
    In the process that made it, ``predict`` waits until a spawned worker has predicted an image
    (a flag file), so that both processes take part whatever the workers' start-up time."""

    def __init__(self, flag):
        self.flag, self.parent = flag, os.getpid()

    def predict(self, record):
        if os.getpid() == self.parent:
            deadline = time.monotonic() + 120
            while not self.flag.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            self.flag.touch()
            time.sleep(0.05)
        return (record.image_id * 2, os.getpid())


class _Rec:
    def __init__(self, image_id):
        self.image_id = image_id


class _Named(_Rec):
    path = "broken.jpg"


class _Fails(_Echo):
    def predict(self, record):
        if os.getpid() != self.parent:
            self.flag.touch()
            raise ValueError("broken image")
        return super().predict(record)


_START_METHODS = [m for m in ("fork", "spawn") if m in __import__("multiprocessing").get_all_start_methods()]


@pytest.mark.parametrize("method", _START_METHODS)
def test_predict_parallel_keeps_order_and_uses_the_caller_and_a_worker(tmp_path, monkeypatch, method):
    import wsis.engine.parallel as parallel

    monkeypatch.setattr(parallel, "start_method", lambda: method)
    records = [_Rec(i) for i in (5, 3, 9, 1, 7, 2)]
    threads = torch.get_num_threads()
    got = predict_parallel(_Echo(tmp_path / "flag"), records, workers=2, progress=False)
    assert list(got) == [5, 3, 9, 1, 7, 2]
    assert [v[0] for v in got.values()] == [10, 6, 18, 2, 14, 4]
    pids = {v[1] for v in got.values()}
    assert len(pids) == 2 and os.getpid() in pids  # the caller predicts too
    assert torch.get_num_threads() == threads  # its thread count is restored
    serial = predict_parallel(_Echo(tmp_path / "flag"), records[:2], workers=1, progress=False)
    assert {v[1] for v in serial.values()} == {os.getpid()}


def test_predict_parallel_names_the_image_a_worker_failed_on(tmp_path):
    with pytest.raises(RuntimeError, match=r"broken\.jpg failed in a worker:(.|\n)*broken image"):
        predict_parallel(_Fails(tmp_path / "flag"), [_Named(1), _Named(2)], workers=2, progress=False)


def test_prm_class_maps_are_computed_for_the_peaks_classes_only(tmp_path):
    """The peaks' classes get the bicubic map of the whole CRM bit for bit (bicubic works per
    channel); the other classes, which retrieval never reads, stay zero. Peaks and PRMs are the
    loop's, in the same order."""
    from test_peak_backprop import _random_model

    from wsis.cues.peak_backprop import peak_response_maps
    from wsis.methods.prm import PRMMethodConfig, PRMPredictor, PRMTestConfig

    model = _random_model(3)
    model.backbone.normalize = lambda x: x
    cfg = PRMMethodConfig(device="cpu", test=PRMTestConfig(max_peaks_per_class=2))
    cfg.test.class_threshold = -1e9  # every class may have peaks; the selection keeps 2 a class
    predictor = PRMPredictor(model, cfg, [10, 20, 30], {10: "a", 20: "b", 30: "c"}, tmp_path)
    x = torch.rand(1, 3, 32, 32)
    classes, prms, maps = predictor.peak_responses(x)
    peaks, ref_prms, crm = peak_response_maps(model, x, select=predictor._select_peaks, batched=False)
    full = torch.nn.functional.interpolate(crm[None], size=(32, 32), mode="bicubic", align_corners=False)[0].numpy()
    np.testing.assert_array_equal(classes, peaks[:, 1].numpy())
    np.testing.assert_array_equal(prms, ref_prms.numpy())
    used = sorted(set(classes.tolist()))
    assert 0 < len(used) <= 3
    np.testing.assert_array_equal(maps[used], full[used])
    assert not maps[[c for c in range(3) if c not in used]].any()


class _TimmBlock(torch.nn.Module):
    """The layer kinds of EfficientNet-Lite as timm builds them: Conv2dSame (stride 2, asymmetric
    padding), 1x1 convs, a 5x5 depthwise conv with symmetric padding, BatchNormAct2d with ReLU6 and
    without an activation, a residual sum."""

    def __init__(self) -> None:
        super().__init__()
        from timm.layers import BatchNormAct2d, Conv2dSame

        self.stem = Conv2dSame(3, 8, 3, stride=2, bias=False)
        self.bn0 = BatchNormAct2d(8, act_layer=torch.nn.ReLU6)
        self.expand = torch.nn.Conv2d(8, 16, 1, bias=False)
        self.bn1 = BatchNormAct2d(16, act_layer=torch.nn.ReLU6)
        self.dw = torch.nn.Conv2d(16, 16, 5, padding=2, groups=16, bias=False)
        self.bn2 = BatchNormAct2d(16, act_layer=torch.nn.ReLU6)
        self.project = torch.nn.Conv2d(16, 8, 1, bias=False)
        self.bn3 = BatchNormAct2d(8, apply_act=False)
        self.out_channels, self.stride = 8, 2

    def forward(self, x):
        x = self.bn0(self.stem(x))
        return x + self.bn3(self.project(self.bn2(self.dw(self.bn1(self.expand(x))))))


def _timm_model():
    from wsis.cues.prm import PRMNet

    torch.manual_seed(3)
    model = PRMNet(_TimmBlock(), 3, sub_pixel_factor=2)
    for m in model.modules():  # eval-mode batch norms with some negative scales
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-0.5, 1.5)
            m.bias.data.uniform_(0.0, 0.5)  # enough units above zero and some above 6 after scaling
    return model.eval()


def test_per_peak_loop_levers_give_the_same_maps_bit_for_bit(monkeypatch):
    """The fused batch norm + ReLU6 Function and the 1x1 input gradient as a matrix product
    (per-peak loop) give the maps of the loop without them bit for bit, and the vmapped pass's
    maps within float32 rounding."""
    import wsis.cues.peak_backprop as pb

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrix-product path is taken at one thread only
    try:
        _check_levers(pb, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def _check_levers(pb, monkeypatch):
    model = _timm_model()
    image = torch.randn(1, 3, 20, 20) * 3
    peaks, fast, crm = pb.peak_response_maps(model, image, batched=False)
    assert len(peaks) >= 3 and fast.sum() > 0
    image.requires_grad_(True)
    with pb.peak_backprop(model, lazy=True):  # the levers are in the graph
        names = set()
        todo = [model.crm(image).grad_fn]
        while todo:
            fn = todo.pop()
            if fn is not None and type(fn).__name__ not in names:
                names.add(type(fn).__name__)
                todo += [f for f, _ in fn.next_functions]
    assert {"_LazyAffineActBackward", "_LazyPeakConv2dBackward"} <= names
    calls = []
    mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda *a: calls.append(1) or mm(*a))
    pb.peak_response_maps(model, image.detach(), peaks=peaks, batched=False)
    assert calls  # the 1x1 convs' input gradients went through torch.mm
    monkeypatch.undo()

    monkeypatch.setattr(pb, "_fused_activation_top", lambda bn: False)
    monkeypatch.setattr(pb, "_is_pointwise", lambda *a: False)
    p_plain, plain, c_plain = pb.peak_response_maps(model, image.detach(), batched=False)
    assert torch.equal(p_plain, peaks) and torch.equal(c_plain, crm)
    assert torch.equal(plain, fast)
    monkeypatch.undo()
    _, vmapped, _ = pb.peak_response_maps(model, image.detach(), peaks=peaks, batched=True, chunk=2)
    torch.testing.assert_close(vmapped, fast, atol=1e-6, rtol=1e-5)


def test_scores_and_peaks_from_one_mask_equal_the_two_passes():
    from wsis.cues.peaks import scores_and_peaks
    from wsis.cues.prm import peak_stimulation

    model = _timm_model()
    crm = torch.randn(1, 3, 16, 16)
    crm[0, 1] = 0.5  # a flat map: every pixel ties with its window
    scores, peaks, values = scores_and_peaks(model, crm)
    want_peaks, want_values = model.find_peaks(crm)
    assert torch.equal(scores, peak_stimulation(crm, model.win_size, model.peak_filter))
    assert torch.equal(peaks, want_peaks) and torch.equal(values, want_values)


def test_opencv_single_thread_restores_the_thread_count():
    import cv2

    before = cv2.getNumThreads()
    with pytest.raises(KeyError):
        with mask_ops.opencv_single_thread():
            assert cv2.getNumThreads() == 1
            raise KeyError("inside")
    assert cv2.getNumThreads() == before
