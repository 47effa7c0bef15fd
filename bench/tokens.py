"""The token-set view that lets every image method run on every dataset.

An image method (DER, RETDM, Order-Free RNN, CMSG) is written against a set of ``N`` tokens of
width ``D`` laid out on a ``grid = (h, w)`` with ``h * w = N``:

* image datasets: a CNN backbone's last feature map ``[B, C, h, w]`` (optionally projected to
  ``width`` by a 1x1 convolution), flattened row-major to tokens ``[B, h*w, D]``: the spatial
  positions, exactly the ``X`` the papers' heads consume;
* feature datasets: modality ``m`` (standardised with the training part's mean and std,
  :class:`Standardize`) goes through its own ``Linear(d_m, D)`` + ReLU to one token, so the M
  modalities form tokens ``[B, M, D]`` on the grid ``(1, M)``. Views are matched by name: the
  encoder remembers the names (and order) it was fitted on, and the batches give the views in
  that order whatever the order of a later dataset's views.

An image encoder also accepts float32 backbone maps ``[B, C, h, w]`` instead of uint8 images (the
cached frozen features of :mod:`bench.feature_cache`): images always travel as uint8, so the dtype
tells the two apart.

:func:`build_token_encoder` picks the image view when the dataset has one (``inputs="auto"``),
else the feature views; ``inputs="features"`` forces the feature encoder on a dataset that has
both (the default ``mnist-mosaic``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from bench.backbones import Backbone, build_backbone
from bench.data import FEATURES, IMAGE, MultiLabelData
from bench.errors import BenchError
from bench.image import native_size, to_model_input

#: Token width of the feature encoder when none is given.
DEFAULT_FEATURE_WIDTH = 256
#: Image side assumed for files of varying size when a method gives no image_size (the papers' 448).
DEFAULT_FILE_IMAGE_SIZE = 448


class TokenEncoder(nn.Module):
    """Inputs -> tokens ``[B, N, D]``. Attributes: ``kind`` ("image" or "features"), ``width`` (D),
    ``grid`` ((h, w)), ``n_tokens`` (h*w). ``backbone_parameters()`` are the pretrained ones (the
    method may give them a smaller learning rate); ``new_parameters()`` the freshly initialised."""

    kind: str = ""

    def __init__(self, width: int, grid: tuple[int, int]):
        super().__init__()
        self.width = int(width)
        self.grid = (int(grid[0]), int(grid[1]))
        self.n_tokens = self.grid[0] * self.grid[1]

    def backbone_parameters(self) -> list[nn.Parameter]:
        return []

    def new_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    def tokens_to_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens [B, N, D] back to a map [B, D, h, w] (for heads that convolve or pool spatially)."""
        b, n, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, *self.grid)


class ImageTokenEncoder(TokenEncoder):
    """uint8 images [B, 3, H, W] -> backbone map -> (1x1 projection) -> tokens [B, h*w, D].

    ``forward`` normalises on the device with the backbone's mean/std; ``channels_last`` switches
    the backbone to NHWC (faster convolutions with tensor cores under bf16 autocast)."""

    kind = IMAGE

    def __init__(self, backbone: Backbone, image_size: tuple[int, int], width: int | None = None,
                 freeze_backbone: bool = False):
        grid = _probe_grid(backbone, image_size)
        super().__init__(width or backbone.out_channels, grid)
        self.backbone = backbone
        self.image_size = tuple(image_size)
        self.freeze_backbone = bool(freeze_backbone)
        self.project = (nn.Identity() if self.width == backbone.out_channels
                        else nn.Conv2d(backbone.out_channels, self.width, 1))
        self.channels_last = False
        if self.freeze_backbone:
            self.backbone.requires_grad_(False)

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:  # a frozen backbone keeps its BatchNorm statistics
            self.backbone.eval()
        return self

    def backbone_map(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the backbone's last map [B, C, h, w] (before the projection)."""
        x = to_model_input(images, self.backbone.mean, self.backbone.std, images.device, self.channels_last)
        if self.freeze_backbone:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def feature_map(self, inputs: torch.Tensor) -> torch.Tensor:
        """uint8 images, or float backbone maps (cached), -> the projected map [B, D, h, w]."""
        if inputs.dtype == torch.uint8:
            return self.project(self.backbone_map(inputs))
        if inputs.ndim != 4 or inputs.shape[1] != self.backbone.out_channels:
            raise BenchError(f"image tokens: float inputs must be {self.backbone.name} maps [B, "
                             f"{self.backbone.out_channels}, h, w], got {tuple(inputs.shape)}")
        return self.project(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        fmap = self.feature_map(inputs)
        if tuple(fmap.shape[-2:]) != self.grid:
            raise BenchError(f"image tokens: expected a {self.grid} feature map for {self.image_size} inputs, "
                             f"got {tuple(fmap.shape[-2:])}; all images of a batch must have the encoder's size")
        return fmap.flatten(2).transpose(1, 2)


class Standardize(nn.Module):
    """Per-feature standardisation of M feature views with statistics of the training part:
    ``(x_m - mean_m) / scale_m`` with scikit-learn's :class:`~sklearn.preprocessing.StandardScaler`
    statistics (population std; a constant feature gets scale 1), stored as float32 buffers.
    ``view_names`` are the views it was fitted on, in the order ``forward`` takes them."""

    def __init__(self, views: dict[str, np.ndarray]):
        from sklearn.preprocessing import StandardScaler

        super().__init__()
        self.view_names = tuple(views)
        self.dims = tuple(int(v.shape[1]) for v in views.values())
        for i, v in enumerate(views.values()):
            scaler = StandardScaler().fit(np.asarray(v, dtype=np.float64))
            self.register_buffer(f"mean_{i}", torch.as_tensor(scaler.mean_, dtype=torch.float32))
            self.register_buffer(f"scale_{i}", torch.as_tensor(scaler.scale_, dtype=torch.float32))

    def forward(self, views: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(views) != len(self.view_names):
            raise BenchError(f"feature views: expected {len(self.view_names)} views {self.view_names}, got {len(views)}")
        return [(x - getattr(self, f"mean_{i}")) / getattr(self, f"scale_{i}") for i, x in enumerate(views)]


class FeatureTokenEncoder(TokenEncoder):
    """M feature views -> M tokens [B, M, D]: per view standardisation (:class:`Standardize`),
    then its own Linear(d_m, D) and ReLU."""

    kind = FEATURES

    def __init__(self, views: dict[str, np.ndarray], width: int | None = None):
        super().__init__(width or DEFAULT_FEATURE_WIDTH, (1, len(views)))
        self.standardize = Standardize(views)
        self.view_names = self.standardize.view_names
        self.embed = nn.ModuleList(nn.Linear(v.shape[1], self.width) for v in views.values())
        self.act = nn.ReLU()

    def forward(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        xs = self.standardize(views)
        return torch.stack([self.act(linear(x)) for x, linear in zip(xs, self.embed, strict=True)], dim=1)


def _probe_grid(backbone: Backbone, image_size: tuple[int, int]) -> tuple[int, int]:
    """The backbone's output grid for ``image_size`` inputs: a dry run for small inputs, else the
    usual ceil(side / stride) arithmetic (exact for the 'same'-padded trunks of this package)."""
    h, w = image_size
    if h * w <= 128 * 128:
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            out = backbone(torch.zeros(1, 3, h, w))
        backbone.train(was)
        return int(out.shape[-2]), int(out.shape[-1])
    return math.ceil(h / backbone.stride), math.ceil(w / backbone.stride)


def select_inputs(data: MultiLabelData, inputs: str = "auto") -> str:
    """Which kind of view the encoder reads: "image" or "features" (``inputs``: auto/image/features)."""
    if inputs not in ("auto", IMAGE, FEATURES):
        raise BenchError(f"inputs must be auto, image or features, got {inputs!r}")
    has_image, has_features = data.image_view is not None, bool(data.feature_views)
    if inputs == "auto":
        return IMAGE if has_image else FEATURES
    if inputs == IMAGE and not has_image:
        raise BenchError(f"dataset {data.name!r} has no image view (inputs='image')")
    if inputs == FEATURES and not has_features:
        raise BenchError(f"dataset {data.name!r} has no feature view (inputs='features')")
    return inputs


def token_shape(data: MultiLabelData, backbone: str, width: int | None = None, inputs: str = "auto",
                image_size: int | None = None) -> tuple[int, int]:
    """(width D, number of tokens N) of what :func:`build_token_encoder` would give, without building
    it (no weights read: the backbone is built on the meta device), for checks before any job."""
    if select_inputs(data, inputs) == FEATURES:
        return int(width or DEFAULT_FEATURE_WIDTH), len(data.feature_views)
    size = (image_size, image_size) if image_size else native_size(data.image_view)
    size = size or (DEFAULT_FILE_IMAGE_SIZE, DEFAULT_FILE_IMAGE_SIZE)
    with torch.device("meta"):
        trunk = build_backbone(backbone, pretrained=False)
        h, w = _probe_grid(trunk, size)
    return int(width or trunk.out_channels), h * w


def host_memory() -> int:
    """This machine's physical memory in bytes (what a check before any job can compare with)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def token_width(data: MultiLabelData, backbone: str, width: int | None = None, inputs: str = "auto") -> int:
    """The width D of the tokens :func:`build_token_encoder` would give (no grid: cheaper than
    :func:`token_shape`)."""
    if width:
        return int(width)
    if select_inputs(data, inputs) == FEATURES:
        return DEFAULT_FEATURE_WIDTH
    with torch.device("meta"):
        return int(build_backbone(backbone, pretrained=False).out_channels)


def build_token_encoder(data: MultiLabelData, backbone: str, width: int | None = None,
                        pretrained: bool | str = True, *, image_size: int | None = None,
                        inputs: str = "auto", freeze_backbone: bool = False,
                        views: dict[str, np.ndarray] | None = None) -> TokenEncoder:
    """The encoder for ``data`` (a training part: feature statistics are taken from it).

    Image view: ``build_backbone(backbone, pretrained)``; ``image_size`` is the side of the square
    images the encoder will see (None: the native size of an in-memory view, else 448).
    Feature views: ``views`` (default: all of ``data``'s, in its order; the encoder expects them in
    this order); ``backbone`` and ``pretrained`` are unused; ``width`` defaults to 256.
    """
    kind = select_inputs(data, inputs)
    if kind == FEATURES:
        return FeatureTokenEncoder(views if views is not None else data.feature_views, width)
    size = (image_size, image_size) if image_size else native_size(data.image_view)
    if size is None:
        size = (DEFAULT_FILE_IMAGE_SIZE, DEFAULT_FILE_IMAGE_SIZE)
    return ImageTokenEncoder(build_backbone(backbone, pretrained), size, width, freeze_backbone)
