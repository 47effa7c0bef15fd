"""``DeepMethod``: the base class of every deep multi-label method (DER, RETDM, Order-Free RNN, CMSG).

A subclass writes only its paper's network head and loss; the data pipeline (images or feature
views -> tokens), the training loop, validation, early stopping, and prediction live here.

Writing a method
----------------
::

    class MyMethod(DeepMethod):
        name = "mine"
        citation = "..."

        def __init__(self, backbone="resnet101", pretrained=True, epochs=60, batch_size=32, lr=0.01,
                     image_size=448, resize=512, device="auto", random_state=0, verbose=False):
            self.backbone = backbone ...           # store only (scikit-learn habit)

        def build_head(self, encoder, n_labels):   # tokens [B, N, D] -> {"logits": [B, L], ...}
            return MyHead(encoder.width, encoder.grid, n_labels)

        def compute_loss(self, outputs, y):        # -> (total, {"cls": ..., "rank": ...})
            bce = F.binary_cross_entropy_with_logits(outputs["logits"], y)
            return bce, {"cls": bce}

Required constructor arguments: ``backbone``, ``pretrained``, ``epochs``, ``batch_size``, ``lr``,
``device``, ``random_state``, ``verbose``. Optional ones (a subclass that declares one in its
``__init__`` makes it a hyper-parameter; otherwise the default in :data:`OPTIONAL_PARAMS` applies):

====================  ========  ======================================================================
``image_size``        None      side of the square training crop / test resize (None: native size of
                                an in-memory view, 448 for files)
``resize``            None      training: warp to ``resize`` x ``resize``, then a random crop of
                                ``image_size`` (DER / ML-GCN: 512 -> 448); None: warp straight to
                                ``image_size``
``flip``              True      random horizontal flip when training
``inputs``            "auto"    "image", "features" or "auto" (the image view when there is one)
``width``             None      token width D (None: the backbone's channels; 256 for feature tokens)
``momentum``          0.9       SGD momentum of the default optimizer
``weight_decay``      1e-4      weight decay of the default optimizer
``backbone_lr_mult``  1.0       learning-rate factor of the pretrained backbone (ML-GCN style: 0.1)
``freeze_backbone``   False     keep the backbone fixed (eval mode, no gradients)
``val_fraction``      0.0       part of the training fold held out for validation (0: none)
``patience``          None      early-stopping patience in epochs (needs validation data)
``num_workers``       None      DataLoader workers (None: automatic)
``amp``               True      bf16 autocast on CUDA
``channels_last``     True      NHWC memory format on CUDA
``steps_per_epoch``   None      cap on the batches per epoch (smoke tests)
``eval_batch_size``   None      batch size for prediction (None: 2 x batch_size)
``grad_clip``         None      clip the gradient norm to this value
====================  ========  ======================================================================

Hooks a subclass may override: :meth:`make_optimizer` (default SGD with momentum and weight decay,
backbone at ``lr * backbone_lr_mult``), :meth:`make_scheduler` (default: constant LR; return a
scheduler stepped per epoch, or set ``scheduler_interval = "step"``), :meth:`scores` (default
``sigmoid(outputs["logits"])``), :meth:`train_transform` / :meth:`test_transform`,
:meth:`epoch_callbacks`, ``predict`` (:meth:`predict_outputs` gives every head output).

Fitted state: ``encoder_`` (:class:`~bench.tokens.TokenEncoder`), ``head_``, ``model_`` (both,
on ``device_``), ``inputs_`` ("image" or "features"), ``n_labels_``, ``history_`` (per-epoch
records: ``loss`` and each loss term, ``lr``, ``time_s``, ``val_map`` when validating).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from bench.api import Method
from bench.data import FEATURES, IMAGE, MultiLabelData
from bench.errors import BenchError
from bench.image import ImageTransform, make_loader, native_size, test_transform, train_transform
from bench.tokens import DEFAULT_FILE_IMAGE_SIZE, TokenEncoder, build_token_encoder, select_inputs
from bench.torch_utils import EarlyStopping, n_batches, torch_device, validation_split
from bench.training import LoopConfig, autocast, macro_average_precision, seed_all, train_loop

REQUIRED_PARAMS = ("backbone", "pretrained", "epochs", "batch_size", "lr", "device", "random_state", "verbose")

#: Defaults of the optional hyper-parameters (used when a subclass does not declare them).
OPTIONAL_PARAMS: dict[str, object] = {
    "image_size": None,
    "resize": None,
    "flip": True,
    "inputs": "auto",
    "width": None,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "backbone_lr_mult": 1.0,
    "freeze_backbone": False,
    "val_fraction": 0.0,
    "patience": None,
    "num_workers": None,
    "amp": True,
    "channels_last": True,
    "steps_per_epoch": None,
    "eval_batch_size": None,
    "grad_clip": None,
}


class TokenNetwork(nn.Module):
    """encoder (inputs -> tokens) followed by the method's head (tokens -> dict of outputs)."""

    def __init__(self, encoder: TokenEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, inputs) -> dict[str, torch.Tensor]:
        outputs = self.head(self.encoder(inputs))
        if not isinstance(outputs, dict) or "logits" not in outputs:
            raise BenchError(f"{type(self.head).__name__}.forward must return a dict with 'logits'")
        return outputs


class DeepMethod(Method):
    """Base class of the deep methods: see the module docstring for the contract."""

    accepts = frozenset({IMAGE, FEATURES})
    #: When the scheduler of :meth:`make_scheduler` steps: after each "epoch" or each "step".
    scheduler_interval: ClassVar[str] = "epoch"

    # ------------------------------------------------------------------ to implement
    def build_head(self, encoder: TokenEncoder, n_labels: int) -> nn.Module:
        """The method's network on top of the tokens: ``head(tokens [B, N, D]) -> dict`` with at
        least ``"logits"`` [B, L]. ``encoder.width``, ``encoder.grid``, ``encoder.n_tokens`` give
        the token layout."""
        raise NotImplementedError

    def compute_loss(self, outputs: dict[str, torch.Tensor], y: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch: (total, {term name: value}); ``y`` float {0,1} [B, L]."""
        raise NotImplementedError

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-label confidences in [0, 1], [B, L]."""
        return torch.sigmoid(outputs["logits"].float())

    # ------------------------------------------------------------------ optional hooks
    def make_optimizer(self, params_backbone: list[nn.Parameter], params_head: list[nn.Parameter]
                       ) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay; the pretrained backbone at ``lr * backbone_lr_mult``."""
        groups = [{"params": params_head, "lr": self.lr}]
        if params_backbone:
            groups.append({"params": params_backbone, "lr": self.lr * self.param("backbone_lr_mult")})
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.param("momentum"),
                               weight_decay=self.param("weight_decay"))

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """None (constant learning rate) or a torch LR scheduler (see ``scheduler_interval``)."""
        return None

    def epoch_callbacks(self) -> list:
        """Functions called with each epoch's history record, after validation (progress bars,
        live plots); the records themselves end up in ``history_``."""
        return []

    def train_transform(self, native: tuple[int, int] | None = None) -> ImageTransform:
        """The training augmentation: resize -> random crop ``image_size`` -> flip."""
        return train_transform(self._image_side(native), self.param("resize"), self.param("flip"))

    def test_transform(self, native: tuple[int, int] | None = None) -> ImageTransform:
        """The evaluation transform: the image resized to ``image_size``."""
        return test_transform(self._image_side(native))

    # ------------------------------------------------------------------ helpers
    def param(self, name: str):
        """A hyper-parameter: the constructor argument when the subclass has it, else its default."""
        if hasattr(self, name):
            return getattr(self, name)
        if name in OPTIONAL_PARAMS:
            return OPTIONAL_PARAMS[name]
        raise AttributeError(f"{type(self).__name__} has no hyper-parameter {name!r}")

    def _image_side(self, native: tuple[int, int] | None) -> int:
        size = self.param("image_size")
        if size:
            return int(size)
        if native is not None:
            if native[0] != native[1] and self.param("resize") is None:
                return max(native)  # non-square arrays: square them (the tokens need one grid)
            return int(native[0])
        return DEFAULT_FILE_IMAGE_SIZE

    def _check_params(self) -> None:
        missing = [p for p in REQUIRED_PARAMS if not hasattr(self, p)]
        if missing:
            raise BenchError(f"method {self.name!r}: DeepMethod needs constructor argument(s) {', '.join(missing)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or value < 1:
                raise BenchError(f"method {self.name!r}: {name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise BenchError(f"method {self.name!r}: lr must be positive, got {self.lr!r}")

    # ------------------------------------------------------------------ fit / predict
    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> DeepMethod:
        self._check_params()
        seed = int(self.random_state or 0)
        seed_all(seed)
        self.device_ = torch_device(self.device)
        if val is None and self.param("val_fraction"):
            train, val = validation_split(train, self.param("val_fraction"), seed)
        if self.param("patience") is not None and val is None:
            raise BenchError(f"method {self.name!r}: early stopping (patience) needs val_fraction > 0")
        self.inputs_ = select_inputs(train, self.param("inputs"))
        self.n_labels_ = train.n_labels
        native = native_size(train.image_view) if self.inputs_ == IMAGE else None
        self.encoder_ = build_token_encoder(
            train, self.backbone, self.param("width"), self.pretrained, image_size=self._image_side(native),
            inputs=self.inputs_, freeze_backbone=self.param("freeze_backbone"))
        self.head_ = self.build_head(self.encoder_, self.n_labels_)
        self.model_ = TokenNetwork(self.encoder_, self.head_).to(self.device_)
        if self.inputs_ == IMAGE and self.device_.type == "cuda" and self.param("channels_last"):
            self.model_.to(memory_format=torch.channels_last)
            self.encoder_.channels_last = True

        optimizer = self.make_optimizer(self.encoder_.backbone_parameters(),
                                        self.encoder_.new_parameters() + list(self.head_.parameters()))
        steps = n_batches(train.n_samples, self.batch_size)
        if self.param("steps_per_epoch"):
            steps = min(steps, int(self.param("steps_per_epoch")))
        scheduler = self.make_scheduler(optimizer, steps)
        config = LoopConfig(epochs=self.epochs, device=self.device_, amp=self.param("amp"),
                            steps_per_epoch=self.param("steps_per_epoch"),
                            scheduler_interval=self.scheduler_interval, grad_clip=self.param("grad_clip"),
                            verbose=bool(self.verbose), callbacks=list(self.epoch_callbacks()))
        stopper = EarlyStopping(patience=int(self.param("patience"))) if self.param("patience") is not None else None

        def step(inputs, y):
            return self.compute_loss(self.model_(inputs), y)

        def validate() -> dict[str, float]:
            return {"val_map": macro_average_precision(val.Y, self._scores_numpy(val))}

        self._loaders = {}  # the validation loader (and its workers) is reused across epochs
        try:
            self.history_ = train_loop(self.model_, self._train_batches(train, seed), step, optimizer,
                                       scheduler, config, validate if val is not None else None, stopper)
        finally:
            del self._loaders
        self.model_.eval()
        return self

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        return self._scores_numpy(data).astype(np.float64)

    def predict_outputs(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """Every output of the head for ``data`` (float32 arrays concatenated over batches), for
        methods whose ``predict`` needs more than the scores (beam search, learned stops)."""
        parts: dict[str, list[np.ndarray]] = {}
        for outputs in self._eval_outputs(data):
            for key, value in outputs.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    # ------------------------------------------------------------------ batches
    def _scores_numpy(self, data: MultiLabelData) -> np.ndarray:
        chunks = [self.scores(outputs).float().cpu().numpy() for outputs in self._eval_outputs(data)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.n_labels_), np.float32)

    def _eval_outputs(self, data: MultiLabelData) -> Iterator[dict[str, torch.Tensor]]:
        if not hasattr(self, "model_"):
            raise BenchError(f"method {self.name!r}: predict called before fit")
        was = self.model_.training
        self.model_.eval()
        batch_size = int(self.param("eval_batch_size") or 2 * self.batch_size)
        try:
            with torch.no_grad(), autocast(self.device_, self.param("amp")):
                for inputs, _ in self._batches(data, shuffle=False, batch_size=batch_size, seed=0, train=False):
                    yield self.model_(inputs)
        finally:
            self.model_.train(was)

    def _train_batches(self, train: MultiLabelData, seed: int):
        if self.inputs_ == IMAGE:  # one loader for all epochs: workers persist, each epoch reshuffles
            loader = self._image_loader(train, shuffle=True, batch_size=self.batch_size, seed=seed, train=True)
            return lambda epoch: self._to_device(loader)
        return lambda epoch: self._batches(train, shuffle=True, batch_size=self.batch_size,
                                           seed=seed * 1000 + epoch, train=True)

    def _batches(self, data: MultiLabelData, *, shuffle: bool, batch_size: int, seed: int, train: bool):
        """(inputs, y) on the device: uint8 images [B, 3, h, w] or a tuple of feature tensors."""
        if self.inputs_ == IMAGE:
            yield from self._to_device(self._image_loader(data, shuffle=shuffle, batch_size=batch_size,
                                                          seed=seed, train=train))
            return
        missing = [v for v in self.encoder_.view_names if v not in data.views]
        if missing:
            raise BenchError(f"dataset {data.name!r} lacks the feature view(s) {missing} the model was fitted on")
        views = [torch.as_tensor(data.views[v], dtype=torch.float32) for v in self.encoder_.view_names]
        Y = torch.as_tensor(data.Y, dtype=torch.float32)
        n = data.n_samples
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else torch.arange(n))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield (tuple(v[idx].to(self.device_) for v in views), Y[idx].to(self.device_))

    def _image_loader(self, data: MultiLabelData, *, shuffle: bool, batch_size: int, seed: int, train: bool):
        view = data.image_view
        if view is None:
            raise BenchError(f"dataset {data.name!r} has no image view; the model was fitted on images")
        key = (id(view), shuffle, batch_size, seed, train)
        cache = getattr(self, "_loaders", None)
        if cache is not None and key in cache:
            return cache[key]
        native = native_size(view)
        transform = self.train_transform(native) if train else self.test_transform(native)
        loader = make_loader(view, data.Y, transform, batch_size=batch_size, shuffle=shuffle, seed=seed,
                             num_workers=self.param("num_workers"), pin_memory=self.device_.type == "cuda")
        if cache is not None and not train:
            cache[key] = loader  # the loader holds the view, so its id stays unique while cached
        return loader

    def _to_device(self, loader):
        for images, y in loader:
            yield images.to(self.device_, non_blocking=True), y.to(self.device_, non_blocking=True)
