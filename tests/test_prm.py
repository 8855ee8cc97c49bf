"""PRM classifier: peak finding, peak stimulation, training, CAM (hand-computed expectations)."""
import numpy as np
import pytest
import torch
from torch import nn

from wsis.cues.cam import class_activation_maps
from wsis.cues.prm import PRMNet, find_peaks, peak_stimulation, prm_loss, prm_optimizer


class _Features(nn.Module):
    """Tiny conv backbone with the attributes PRMNet reads."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, out_channels, 3, stride=2, padding=1), nn.ReLU())
        self.out_channels = out_channels
        self.stride = 4

    def forward(self, x):
        return self.body(x)


class _Identity(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels
        self.stride = 1

    def forward(self, x):
        return x


def _hand_crm() -> torch.Tensor:
    """(1, 2, 6, 6). Channel 0: a ramp decreasing in row-major order (only local max (0,0), value 0),
    bumps 8 at (1,4) and 3 at (4,1), and a dip of -5 on rows/cols 3..5 whose centre (4,4) is -4: a
    local max below the median. Channel 1: a constant plateau."""
    base = -np.arange(36, dtype=np.float64).reshape(6, 6) * 1e-3
    c0 = base.copy()
    c0[1, 4] += 8
    c0[4, 1] += 3
    c0[3:6, 3:6] += -5
    c0[4, 4] = -4
    c1 = np.full((6, 6), 2.0)
    return torch.tensor(np.stack([c0, c1])[None], dtype=torch.float32)


def _as_set(peaks):
    return {tuple(p) for p in peaks.tolist()}


def test_find_peaks_median_drops_weak_local_maxima():
    crm = _hand_crm()
    peaks, values = find_peaks(crm, win_size=3, peak_filter="median")
    # the plateau gives one peak, its first pixel (the reference's max_pool2d index rule)
    assert _as_set(peaks) == {(0, 0, 0, 0), (0, 0, 1, 4), (0, 0, 4, 1), (0, 1, 0, 0)}
    np.testing.assert_allclose(values.numpy(), [0.0, 8 - 0.010, 3 - 0.025, 2.0], atol=1e-6)
    unfiltered, _ = find_peaks(crm, win_size=3, peak_filter="none")
    assert _as_set(unfiltered) - _as_set(peaks) == {(0, 0, 4, 4)}


def test_find_peaks_window_size():
    crm = torch.zeros(1, 1, 1, 7)
    crm[0, 0, 0] = torch.tensor([0.0, 5, 0, 4, 0, 0, 1])
    assert _as_set(find_peaks(crm, 3, "none")[0]) == {(0, 0, 0, 1), (0, 0, 0, 3), (0, 0, 0, 6)}
    # a 5-wide window sees 5 next to 4 and 4 next to... only 5 and 1 survive (1's window is 0, 0, 1)
    assert _as_set(find_peaks(crm, 5, "none")[0]) == {(0, 0, 0, 1), (0, 0, 0, 6)}
    with pytest.raises(ValueError):
        find_peaks(crm, 4)


def test_class_score_is_mean_at_peaks_and_gradient_only_there():
    crm = _hand_crm().requires_grad_(True)
    scores = peak_stimulation(crm, 3, "median")
    expected = [(0.0 + 8 - 0.010 + 3 - 0.025) / 3, 2.0]
    np.testing.assert_allclose(scores.detach().numpy()[0], expected, rtol=1e-6)
    upstream = torch.tensor([[1.5, -2.0]])
    grad, = torch.autograd.grad(scores, crm, upstream)
    want = torch.zeros_like(crm)
    # the reference's backward: the upstream gradient itself at each peak (no 1/N), zero elsewhere
    want[0, 0, 0, 0] = want[0, 0, 1, 4] = want[0, 0, 4, 1] = 1.5
    want[0, 1, 0, 0] = -2.0
    assert torch.equal(grad, want)


def test_crm_upsampling_keeps_corners():
    torch.manual_seed(0)
    model = PRMNet(_Identity(3), 2, sub_pixel_factor=8).eval()
    x = torch.randn(1, 3, 5, 7)
    raw = model.raw_crm(x)
    up = model.crm(x)
    assert up.shape == (1, 2, 40, 56)
    # align_corners=True: the corner samples of the upsampled map are the raw corners
    for y, x_ in [(0, 0), (-1, -1), (0, -1), (-1, 0)]:
        torch.testing.assert_close(up[..., y, x_], raw[..., y, x_])


def test_loss_is_multilabel_soft_margin():
    scores = torch.tensor([[0.0, 2.0]])
    targets = torch.tensor([[1, 0]])
    # mean over classes of -[t log sigmoid(s) + (1 - t) log sigmoid(-s)]
    want = (np.log(2) + np.log(1 + np.exp(2.0))) / 2
    assert prm_loss(scores, targets).item() == pytest.approx(want, rel=1e-6)


def test_param_groups_and_optimizer_follow_reference():
    from wsis.methods.prm.config import PRMMethodConfig

    model = PRMNet(_Features(), 3)
    cfg = PRMMethodConfig()
    s = cfg.schedule
    opt = prm_optimizer(model, s.lr, s.backbone_lr_mult, s.momentum, s.weight_decay)
    head, body = opt.param_groups
    assert head["lr"] == pytest.approx(0.01) and body["lr"] == pytest.approx(1e-4)
    assert {id(p) for p in head["params"]} == {id(p) for p in model.classifier.parameters()}
    assert {id(p) for p in body["params"]} == {id(p) for p in model.backbone.parameters()}
    assert head["momentum"] == 0.9 and head["weight_decay"] == 1e-4
    assert (cfg.data.image_size, s.batch_size, s.epochs, s.iterations, cfg.model.sub_pixel_factor) == (448, 16, 20, None, 8)


def _shapes_batch(rng: np.random.Generator, n: int, size: int = 32):
    """Class 0: a filled 6x6 square; class 1: a cross (arms 9 long, 3 thick); each image has one
    or both, at random places, on noise."""
    images = rng.normal(0, 0.1, (n, 3, size, size)).astype(np.float32)
    targets = np.zeros((n, 2), np.float32)
    for i in range(n):
        present = [[0], [1], [0, 1]][rng.integers(3)]
        for c in present:
            y, x = rng.integers(1, size - 10, 2)
            if c == 0:
                images[i, :, y:y + 6, x:x + 6] += 1.0
            else:
                images[i, :, y + 3:y + 6, x:x + 9] += 1.0
                images[i, :, y:y + 9, x + 3:x + 6] += 1.0
            targets[i, c] = 1
    return torch.from_numpy(images), torch.from_numpy(targets)


@pytest.mark.slow  # ~15 s on the shared 2-core machine
def test_prmnet_trains_on_squares_and_crosses():
    torch.manual_seed(0)
    model = PRMNet(_Features(), 2, sub_pixel_factor=2)
    held_out = _shapes_batch(np.random.default_rng(1), 64)

    def held_out_loss() -> float:
        model.eval()
        with torch.no_grad():
            value = prm_loss(model(held_out[0]), held_out[1]).item()
        model.train()
        return value

    before = held_out_loss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(60):
        images, targets = _shapes_batch(rng, 16)
        loss = prm_loss(model(images), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = held_out_loss()
    assert after < 0.75 * before, (before, after)


def test_cam_is_normalised_crm_channel():
    model = PRMNet(_Identity(3), 2)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor([[1.0, 0, 0], [-2.0, 0, 1]])[:, :, None, None])
        model.classifier.bias.copy_(torch.tensor([0.0, 0.5]))
    x = torch.stack([torch.arange(6.0).reshape(2, 3), torch.zeros(2, 3), torch.ones(2, 3)])[None]
    cams = class_activation_maps(model, x, [1, 0])
    assert cams.shape == (1, 2, 2, 3)
    # class 1: -2 * x0 + 1 + 0.5 = [[1.5, -0.5, -2.5], [-4.5, -6.5, -8.5]] -> min-max over a span of 10
    torch.testing.assert_close(cams[0, 0], torch.tensor([[1.0, 0.8, 0.6], [0.4, 0.2, 0.0]]))
    torch.testing.assert_close(cams[0, 1], torch.arange(6.0).reshape(2, 3) / 5)
    per_image = class_activation_maps(model, torch.cat([x, x]), torch.tensor([[0], [1]]))
    torch.testing.assert_close(per_image[:, 0], torch.stack([cams[0, 1], cams[0, 0]]))
