"""Peak backpropagation: the winner-take-all rule by hand, and batched == per-peak maps."""
import numpy as np
import pytest
import torch
from torch import nn
from timm.layers import Conv2dSame

from wsis.cues.peak_backprop import EPS, normalise_prms, peak_backprop, peak_response_maps
from wsis.cues.prm import PRMNet


def _rule_by_hand(x: np.ndarray, w: np.ndarray, g: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's backward for one stride-1 conv, by explicit loops. x (C, H, W), w (O, C, k, k),
    g (O, H', W'). Returns (grad_x, Z)."""
    xs = x - x.min()
    xp = np.pad(xs, ((0, 0), (pad, pad), (pad, pad)))  # the shifted input is what gets zero-padded
    wp = np.maximum(w, 0)
    n_out, n_in, k, _ = w.shape
    oh, ow = g.shape[1:]
    z = np.zeros((n_out, oh, ow))
    for o in range(n_out):
        for i in range(oh):
            for j in range(ow):
                z[o, i, j] = (wp[o] * xp[:, i:i + k, j:j + k]).sum()
    gz = np.where(z < EPS, 0.0, g / (np.abs(z) + EPS))
    back = np.zeros_like(xp)
    for o in range(n_out):
        for i in range(oh):
            for j in range(ow):
                back[:, i:i + k, j:j + k] += wp[o] * gz[o, i, j]
    return back[:, pad:pad + x.shape[1], pad:pad + x.shape[2]] * xs, z


@pytest.mark.parametrize("lazy", [False, True])
def test_conv_backward_matches_rule_by_hand(lazy):
    rng = np.random.default_rng(0)
    conv = nn.Conv2d(2, 2, kernel_size=2, padding=1, bias=True, dtype=torch.float64)
    w = rng.normal(size=(2, 2, 2, 2))  # mixed signs: only the positive part may count
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w))
        conv.bias.copy_(torch.tensor([0.7, -0.3]))
    x = rng.uniform(-1, 2, size=(2, 3, 3))
    x[:, 0, 0] = -3.0  # the global minimum in both channels: output (0, 0) sees only zeros -> Z = 0
    g = rng.integers(-3, 4, size=(2, 4, 4)).astype(np.float64)
    g[:, 0, 0] = 5.0
    want, z = _rule_by_hand(x, w, g, pad=1)
    assert (z[:, 0, 0] == 0).all() and (z > 0).sum() > 20  # the zero-normaliser branch is exercised

    xt = torch.tensor(x[None], dtype=torch.float64, requires_grad=True)
    with peak_backprop(conv, lazy=lazy):
        out = conv(xt)
        other, = torch.autograd.grad(out, xt, torch.ones_like(out), retain_graph=True)
        got, = torch.autograd.grad(out, xt, torch.tensor(g[None]))  # lazy: the factors of the first pass
    np.testing.assert_allclose(got[0].numpy(), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(other[0].numpy(), _rule_by_hand(x, w, np.ones_like(g), pad=1)[0], rtol=1e-10, atol=1e-12)
    # the forward value is the ordinary conv, bias included
    torch.testing.assert_close(out, nn.functional.conv2d(xt, conv.weight, conv.bias, padding=1))


class _Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise 3x3 ("same" padding, timm), 1x1 project, skip."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, 2 * c, 1, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6(inplace=True),
            Conv2dSame(2 * c, 2 * c, 3, groups=2 * c, bias=False), nn.BatchNorm2d(2 * c), nn.ReLU6(),
            nn.Conv2d(2 * c, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class _SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            Conv2dSame(3, 8, 3, stride=2, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            _Block(8), nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.BatchNorm2d(16), nn.ReLU())
        self.out_channels = 16
        self.stride = 4

    def forward(self, x):
        return self.body(x)


def _random_model(seed: int = 0) -> PRMNet:
    torch.manual_seed(seed)
    model = PRMNet(_SmallNet(), 3, sub_pixel_factor=4)
    for m in model.modules():  # non-trivial eval-mode BN, some scales negative
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def test_batched_maps_equal_per_peak_maps():
    model = _random_model()
    image = torch.randn(1, 3, 24, 24)
    peaks, loop, crm = peak_response_maps(model, image, batched=False)
    assert len(peaks) >= 4 and crm.shape == (3, 24, 24)
    assert (loop >= 0).all() and torch.allclose(loop.sum(dim=(1, 2)), torch.ones(len(peaks)))
    for mode in ("vmap", "expand"):
        p, batched, c = peak_response_maps(model, image, batched=True, batch_mode=mode, chunk=3)
        assert torch.equal(p, peaks) and torch.equal(c, crm)
        torch.testing.assert_close(batched, loop, atol=1e-5, rtol=1e-5)


def test_maps_differ_from_plain_gradient_and_model_is_restored():
    model = _random_model().train()
    image = torch.randn(1, 3, 24, 24)
    peaks, prms, _ = peak_response_maps(model, image)
    assert model.training and all("forward" not in m.__dict__ for m in model.modules())
    model.eval()
    x = image.clone().requires_grad_(True)
    crm = model.crm(x)
    b, c, y, x_ = peaks[0].tolist()
    plain, = torch.autograd.grad(crm[b, c, y, x_], x)
    assert not torch.allclose(normalise_prms(plain), prms[:1], atol=1e-4)


def test_peak_selection_thresholds():
    model = _random_model()
    image = torch.randn(1, 3, 24, 24)
    all_peaks, _, crm = peak_response_maps(model, image)
    values = crm[all_peaks[:, 1], all_peaks[:, 2], all_peaks[:, 3]]
    cut = values.median().item()
    kept, prms, _ = peak_response_maps(model, image, peak_threshold=cut)
    assert torch.equal(kept, all_peaks[values > cut]) and len(prms) == len(kept)
    none, prms, _ = peak_response_maps(model, image, class_threshold=float("inf"))
    assert none.shape == (0, 4) and prms.shape == (0, 24, 24)


def test_given_peaks_and_bad_input():
    model = _random_model()
    image = torch.randn(1, 3, 24, 24)
    peaks = torch.tensor([[0, 2, 5, 7], [0, 0, 20, 3]])
    got, prms, _ = peak_response_maps(model, image, peaks)
    assert torch.equal(got, peaks) and prms.shape == (2, 24, 24)
    with pytest.raises(ValueError):
        peak_response_maps(model, torch.randn(2, 3, 24, 24))


def test_normalise_prms_clamps_and_keeps_zero_maps_zero():
    grads = torch.zeros(2, 3, 2, 2)
    grads[0, 0] = torch.tensor([[1.0, -4.0], [2.0, 0.0]])
    grads[0, 1] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    grads[1, 0, 0, 0] = -1.0
    prms = normalise_prms(grads)
    # colour sums [[2, -3], [2, 0]] -> clamp -> [[2, 0], [2, 0]] -> / 4
    torch.testing.assert_close(prms[0], torch.tensor([[0.5, 0.0], [0.5, 0.0]]))
    assert torch.equal(prms[1], torch.zeros(2, 2))


def test_stacked_networks_equal_each_network_alone():
    """Three networks of one architecture, batched over networks and peaks, give each network's own
    maps; networks with different peak counts (and none) are padded correctly."""
    from wsis.cues.peak_backprop import stacked_peak_response_maps

    models = [_random_model(seed) for seed in (0, 1, 2)]
    image = torch.randn(1, 3, 24, 24)
    alone = [peak_response_maps(m, image, batched=False) for m in models]
    keep = [None, 2, 0]  # all peaks, the first two, none

    def select(t, model, crm):
        peaks, _ = model.find_peaks(crm)
        return peaks if keep[t] is None else peaks[: keep[t]]

    stacked = stacked_peak_response_maps(models, image, select, chunk=3)
    assert len(stacked) == 3
    for t, ((p, maps, crm), (p_ref, maps_ref, crm_ref)) in enumerate(zip(stacked, alone)):
        n = len(p_ref) if keep[t] is None else keep[t]
        assert torch.equal(p, p_ref[:n])
        torch.testing.assert_close(crm, crm_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(maps, maps_ref[:n], atol=1e-5, rtol=1e-5)
    assert len(alone[0][0]) > 3  # more peaks than one chunk, so slots span chunks
