"""``DeepMethod``: the base class of every deep multi-label method (DER, RMLC, RETDM, Order-Free RNN, CMSG).

A subclass writes its paper's network and loss; the data pipeline (images, cached backbone maps or
feature views -> batches on the device), the training loop (:mod:`bench.training`), validation,
early stopping, calibration and prediction live here.

Writing a method
----------------
::

    class MyMethod(DeepMethod):
        name = "mine"
        citation = "..."

        def __init__(self, backbone="resnet101", pretrained=True, epochs=60, batch_size=32, lr=0.01,
                     patience=None, monitor="val_mAP", val_fraction=0.0, amp=True,
                     image_size=448, resize=512, device="auto", random_state=0):
            self.backbone = backbone ...           # store only (scikit-learn habit)

        def build_head(self, encoder, n_labels):   # tokens [B, N, D] -> {"logits": [B, L], ...}
            return MyHead(encoder.width, encoder.grid, n_labels)

        def compute_loss(self, outputs, y):        # -> (total, {"cls": ..., "rank": ...}), float32
            bce = F.binary_cross_entropy_with_logits(outputs["logits"], y)
            return bce, {"cls": bce}

Required constructor arguments: ``epochs``, ``batch_size``, ``lr``, ``device``, ``random_state``, and
for the token network of :meth:`build_model` ``backbone`` and ``pretrained``. The names of
:data:`COMMON_PARAMS` (``epochs``, ``batch_size``, ``lr``, ``patience``, ``monitor``,
``val_fraction``, ``amp``) mean the same in every method, so a dataset's scale defaults and
``--set`` apply to all of them alike. Optional ones (a subclass that declares one in its
``__init__`` makes it a hyper-parameter; otherwise the default in :data:`OPTIONAL_PARAMS` applies):

====================  ==========  ====================================================================
``image_size``        None        side of the square training crop / test resize (None: native size of
                                  an in-memory view, 448 for files)
``resize``            None        training: warp to ``resize`` x ``resize``, then a random crop of
                                  ``image_size`` (DER / ML-GCN: 512 -> 448); None: warp straight to
                                  ``image_size``
``five_crop``         None        training: after ``resize``, one of the four corner / centre crops of
                                  this side (RETDM), then the random crop
``flip``              True        random horizontal flip when training
``inputs``            "auto"      "image", "features" or "auto" (the image view when there is one and
                                  the method accepts images)
``width``             None        token width D (None: the backbone's channels; 256 for feature tokens)
``momentum``          0.9         SGD momentum of the default optimizer
``weight_decay``      1e-4        weight decay of the default optimizer
``backbone_lr_mult``  1.0         learning-rate factor of the pretrained backbone (ML-GCN style: 0.1)
``freeze_backbone``   False       keep the backbone fixed (eval mode, no gradients)
``cache_features``    False       with a frozen backbone: compute its maps once per image and reuse
                                  them every epoch and fold (:mod:`bench.feature_cache`)
``val_fraction``      0.0         part of the training fold held out for validation (0: none)
``patience``          None        early-stopping patience in epochs (needs validation data)
``monitor``           "val_mAP"   what early stopping watches: ``val_loss`` or ``val_<metric>`` of
                                  :func:`bench.metrics.evaluate` (direction from the name)
``amp``               True        bf16 autocast of the forward pass on CUDA (losses stay float32)
``ema_decay``         None        keep an EMA of the weights with this decay and predict with it
``ema_warmup``        False       EMA decay min(ema_decay, (1 + t) / (10 + t)) at update t (short runs)
``num_workers``       None        DataLoader workers (None: automatic)
``channels_last``     True        NHWC memory format (CUDA and CPU)
``steps_per_epoch``   None        cap on the batches per epoch (smoke tests)
``eval_batch_size``   None        batch size for prediction (None: 2 x batch_size)
``grad_clip``         None        clip the gradient norm to this value
``verbose``           False       log one line per epoch
====================  ==========  ====================================================================

Hooks (each tested on a tiny model in ``tests/test_deep_hooks.py``)
-------------------------------------------------------------------
1.  :meth:`setup` ``(train)``: data-aware set-up, called after the validation carve-out with the
    *training part only* and before the model is built (label statistics, neighbours, label names).
2.  :meth:`forward_train` ``(model, batch)``: the training forward pass, which may condition on
    ``batch.y`` (``TokenNetwork`` passes keyword arguments on to the head:
    ``model(batch.inputs, y=batch.y)``); :meth:`forward_eval` is the label-free one.
3.  :meth:`stages`: the training stages (:class:`~bench.training.Stage`: trainable parameters,
    optimizer, schedule, epochs, and either a loss or a custom per-batch ``update`` that does its
    own optimizer steps). Default: one stage from :meth:`make_optimizer`, :meth:`make_scheduler`
    and :meth:`training_loss`.
4.  :meth:`step_callbacks`: functions ``(model, batch)`` called after every update;
    ``ema_decay`` adds an :class:`~bench.training.EMA`, whose weights validation, early stopping
    and prediction use. :meth:`epoch_callbacks`: functions of each epoch's history record.
5.  Validation (:meth:`validate`) returns ``val_loss`` (the loss of :meth:`compute_loss` per
    example), ``val_<term>`` and every ``val_<metric>`` of :func:`bench.metrics.evaluate`; a stage's
    scheduler may be metric-driven (``ReduceLROnPlateau``, stepped with ``val_loss``); early
    stopping watches ``monitor``.
6.  :meth:`calibrate` ``(val)``: post-fit calibration on the validation part (None without one),
    with the final weights (a stop threshold, per-label thresholds).
7.  Batches (:class:`~bench.training.Batch`) carry ``index``, the examples' positions in the
    training part; :meth:`train_batch_indices` ``(n, epoch)`` composes each epoch's batches (a
    sampler: RETDM adds images carrying a sample's neighbour labels).
8.  ``five_crop`` (RETDM's multi-crop augmentation), and :meth:`train_transform` /
    :meth:`test_transform` to override.
9.  ``cache_features``: a frozen backbone's maps computed once per image, reused every epoch
    and fold; the batches then carry float32 maps ``[B, C, h, w]`` instead of images.
10. :meth:`decode` ``(model, batch)``: structured prediction (beam search) on the device;
    ``predict`` returns it. :meth:`map_batches` runs any function of (model, batch) over a dataset.
11. The forward pass runs under autocast, the loss outside it in float32
    (:func:`~bench.training.full_precision`); ``amp`` is a constructor argument, so part of the
    job's identity.

Readouts and maps: :meth:`output_scores` gives σ of named outputs in one pass (for a method's
``predict_readouts``, see :class:`bench.api.Method`); :meth:`class_maps` gives the head's
``"class_maps"`` output [n, L, h, w] on the backbone grid (DER's CADMs; attention maps).

Fitted state: ``model_`` (on ``device_``; the EMA weights when ``ema_decay`` is set), for the token
network also ``encoder_`` (:class:`~bench.tokens.TokenEncoder`) and ``head_``; ``inputs_``
("image" or "features"), ``view_dims_`` / ``view_names_`` (the feature views it reads, by name, in
the order of the training part, and their dimensions), ``n_labels_``, ``history_``
(per-epoch records: ``loss`` and each loss term, ``lr``, ``time_s``, the ``val_`` keys when
validating, ``stage`` when there are several), ``best_epoch_`` (the epoch whose weights were kept).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from bench.api import Method, NoClassMaps
from bench.data import FEATURES, IMAGE, MultiLabelData
from bench.errors import BenchError
from bench.image import (
    ImageTransform,
    IndexBatches,
    make_loader,
    native_size,
    test_transform,
    train_transform,
)
from bench.metrics import METRICS, evaluate
from bench.protocols import validation_split
from bench.tokens import DEFAULT_FILE_IMAGE_SIZE, TokenEncoder, build_token_encoder, select_inputs
from bench.torch_utils import n_batches, torch_device
from bench.training import (
    EMA,
    Batch,
    LoopConfig,
    Stage,
    StepCallback,
    autocast,
    full_precision,
    seed_all,
    train_loop,
)

REQUIRED_PARAMS = ("epochs", "batch_size", "lr", "device", "random_state")
#: Required by the token network of the default :meth:`DeepMethod.build_model`.
TOKEN_PARAMS = ("backbone", "pretrained")
#: Hyper-parameter names shared by every deep method (and, where they apply, every method).
COMMON_PARAMS = ("epochs", "batch_size", "lr", "patience", "monitor", "val_fraction", "amp")

#: Defaults of the optional hyper-parameters (used when a subclass does not declare them).
OPTIONAL_PARAMS: dict[str, object] = {
    "image_size": None,
    "resize": None,
    "five_crop": None,
    "flip": True,
    "inputs": "auto",
    "width": None,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "backbone_lr_mult": 1.0,
    "freeze_backbone": False,
    "cache_features": False,
    "val_fraction": 0.0,
    "patience": None,
    "monitor": "val_mAP",
    "amp": True,
    "ema_decay": None,
    "ema_warmup": False,
    "num_workers": None,
    "channels_last": True,
    "steps_per_epoch": None,
    "eval_batch_size": None,
    "grad_clip": None,
    "verbose": False,
}

#: What early stopping may monitor.
MONITORS = ("val_loss", *(f"val_{name}" for name in METRICS))


class TokenNetwork(nn.Module):
    """encoder (inputs -> tokens) followed by the method's head (tokens -> dict of outputs).

    Keyword arguments of ``forward`` (e.g. ``y`` in a label-conditioned training pass) go to the head."""

    def __init__(self, encoder: TokenEncoder, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, inputs, **head_kwargs) -> dict[str, torch.Tensor]:
        outputs = self.head(self.encoder(inputs), **head_kwargs)
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
        """The loss of a batch: (total, {term name: value}); ``outputs`` float32, ``y`` float32 {0,1}
        [B, L]. It trains the default stage and is the validation loss (``val_loss``)."""
        raise NotImplementedError

    def scores(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-label confidences in [0, 1], [B, L]."""
        return torch.sigmoid(outputs["logits"].float())

    # ------------------------------------------------------------------ hooks
    def setup(self, train: MultiLabelData) -> None:
        """Hook 1: called once per fit with the training part (the validation part already carved
        out) before the model is built; store what it learns in attributes ending with ``_``."""

    def build_model(self, train: MultiLabelData) -> nn.Module:
        """The whole network. Default: the token encoder of :mod:`bench.tokens` (image backbone or
        per-view feature tokens) followed by :meth:`build_head` (sets ``encoder_``, ``head_``)."""
        missing = [p for p in TOKEN_PARAMS if not hasattr(self, p)]
        if missing:
            raise BenchError(f"method {self.name!r}: the token network needs constructor argument(s) "
                             f"{', '.join(missing)}")
        native = native_size(train.image_view) if self.inputs_ == IMAGE else None
        views = {n: train.views[n] for n in self.view_names_}
        self.encoder_ = build_token_encoder(
            train, self.backbone, self.param("width"), self.pretrained, image_size=self._image_side(native),
            inputs=self.inputs_, freeze_backbone=self.param("freeze_backbone"), views=views)
        self.head_ = self.build_head(self.encoder_, self.n_labels_)
        return TokenNetwork(self.encoder_, self.head_)

    def forward_train(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Hook 2: the forward pass of training (and of the validation loss); may use ``batch.y``."""
        return model(batch.inputs)

    def forward_eval(self, model: nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """The forward pass of prediction (no labels)."""
        return model(batch.inputs)

    def training_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The default stage's loss: :meth:`forward_train` under autocast, :meth:`compute_loss` in
        float32 outside it (hook 11)."""
        with self.autocast():
            outputs = self.forward_train(self.model_, batch)
        return self.compute_loss(full_precision(outputs), batch.y)

    def stages(self) -> list[Stage]:
        """Hook 3: the training stages. Default: one stage of ``epochs`` epochs, the optimizer of
        :meth:`make_optimizer`, the scheduler of :meth:`make_scheduler`, :meth:`training_loss` and
        early stopping with ``patience``."""
        optimizer = self.make_optimizer(self.model_)
        return [Stage("train", epochs=int(self.epochs), optimizer=optimizer, loss=self.training_loss,
                      scheduler=self.make_scheduler(optimizer, self._steps_per_epoch()),
                      scheduler_interval=self.scheduler_interval, patience=self.param("patience"))]

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """SGD with momentum and weight decay; a pretrained backbone at ``lr * backbone_lr_mult``."""
        backbone = self.encoder_.backbone_parameters() if isinstance(model, TokenNetwork) else []
        ids = {id(p) for p in backbone}
        groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in ids], "lr": self.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.lr * self.param("backbone_lr_mult")})
        return torch.optim.SGD(groups, lr=self.lr, momentum=self.param("momentum"),
                               weight_decay=self.param("weight_decay"))

    def make_scheduler(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
        """None (constant learning rate) or a torch LR scheduler (see ``scheduler_interval``)."""
        return None

    def step_callbacks(self) -> list[StepCallback]:
        """Hook 4: functions ``(model, batch)`` called after every update."""
        return []

    def epoch_callbacks(self) -> list[Callable[[dict], None]]:
        """Functions called with each epoch's history record, after validation (progress bars,
        live plots); the records themselves end up in ``history_``."""
        return []

    def calibrate(self, val: MultiLabelData | None) -> None:
        """Hook 6: called after training, with the final weights, on the validation part (None
        when there is none); store what it learns in attributes ending with ``_``."""

    def train_batch_indices(self, n: int, epoch: int) -> list[np.ndarray]:
        """Hook 7: the batches of one epoch, as index arrays into the training part (``n``
        examples). Default: a permutation drawn from (``random_state``, ``epoch``) cut into
        ``batch_size`` pieces (the last one may be smaller)."""
        order = np.random.default_rng([int(self.random_state or 0), int(epoch)]).permutation(n)
        return [order[s:s + self.batch_size] for s in range(0, n, self.batch_size)]

    def train_transform(self, native: tuple[int, int] | None = None) -> ImageTransform:
        """The training augmentation: resize -> (one of five crops) -> random crop ``image_size`` -> flip."""
        return train_transform(self._image_side(native), self.param("resize"), self.param("flip"),
                               self.param("five_crop"))

    def test_transform(self, native: tuple[int, int] | None = None) -> ImageTransform:
        """The evaluation transform: the image resized to ``image_size``."""
        return test_transform(self._image_side(native))

    def decode(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        """Hook 10: the predicted label sets of a batch, {0,1} [B, L]. Default: scores >= threshold."""
        return self.scores(full_precision(self.forward_eval(model, batch))) >= self.threshold

    # ------------------------------------------------------------------ helpers for subclasses
    def param(self, name: str):
        """A hyper-parameter: the constructor argument when the subclass has it, else its default."""
        if hasattr(self, name):
            return getattr(self, name)
        if name in OPTIONAL_PARAMS:
            return OPTIONAL_PARAMS[name]
        raise AttributeError(f"{type(self).__name__} has no hyper-parameter {name!r}")

    def autocast(self):
        """The forward passes' autocast context (bf16 on CUDA when ``amp``; nothing on the CPU)."""
        return autocast(self.device_, bool(self.param("amp")))

    def map_batches(self, data: MultiLabelData, fn: Callable[[nn.Module, Batch], object]):
        """``fn(model, batch)`` over ``data`` in eval mode, without gradients, under autocast, with
        the weights that predict; its tensors (or dicts of tensors) concatenated as float32 numpy."""
        model = self._eval_model()
        parts: list = []
        with _eval_mode(model), torch.no_grad(), self.autocast():
            for batch in self._source(data, train=False).batches(self._eval_index_batches(data.n_samples)):
                parts.append(fn(model, batch))
        return _concatenate(parts)

    def output_scores(self, data: MultiLabelData, keys: dict[str, str]) -> dict[str, np.ndarray]:
        """{name: σ(outputs[key])} for ``keys`` = {name: output key}, float64 [n, L], in one pass."""
        def fn(model, batch):
            outputs = full_precision(self.forward_eval(model, batch))
            return {name: torch.sigmoid(outputs[key]) for name, key in keys.items()}

        out = self.map_batches(data, fn)
        return {name: (out[name] if out else np.zeros((0, self.n_labels_))).astype(np.float64) for name in keys}

    # ------------------------------------------------------------------ fit / predict
    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> DeepMethod:
        train, val = self.prepare_fit(train, val)
        ema = (EMA(self.model_, float(self.param("ema_decay")), bool(self.param("ema_warmup")))
               if self.param("ema_decay") is not None else None)
        self._ema = ema
        config = LoopConfig(device=self.device_, amp=bool(self.param("amp")),
                            steps_per_epoch=self.param("steps_per_epoch"), monitor=self.param("monitor"),
                            grad_clip=self.param("grad_clip"), verbose=bool(self.param("verbose")),
                            callbacks=list(self.epoch_callbacks()),
                            step_callbacks=([ema] if ema else []) + list(self.step_callbacks()))
        self._sources = {}  # per-fit data on the device / loaders (the validation loader's workers persist)
        try:
            source = self._source(train, train=True)
            result = train_loop(self.model_, self.stages(),
                                lambda epoch: source.batches(self.train_batch_indices(train.n_samples, epoch)),
                                config, (lambda: self.validate(val)) if val is not None else None,
                                eval_model=self._eval_model)
        finally:
            del self._sources
        if ema is not None:                                                 # predict with the EMA weights
            self.model_ = ema.module
            if isinstance(self.model_, TokenNetwork):
                self.encoder_, self.head_ = self.model_.encoder, self.model_.head
        self._ema = None
        return self.finish_fit(result.history, result.best_epoch, val)

    def prepare_fit(self, train: MultiLabelData, val: MultiLabelData | None = None
                    ) -> tuple[MultiLabelData, MultiLabelData | None]:
        """The first half of :meth:`fit`, up to a built model on the device: checks, seeds, the
        validation carve-out, the inputs, :meth:`setup`, :meth:`build_model`. Returns the training
        part and the validation part (None without one). Also used by :mod:`bench.stacked`,
        which trains several folds' models together."""
        self._check_params()
        seed = int(self.random_state or 0)
        seed_all(seed)
        self.device_ = torch_device(self.device)
        if val is None and self.param("val_fraction"):
            train, val = validation_split(train, self.param("val_fraction"), seed)
        if self.param("patience") is not None and val is None:
            raise BenchError(f"method {self.name!r}: early stopping (patience) needs val_fraction > 0")
        inputs = self.param("inputs")
        if inputs == "auto" and IMAGE not in self.accepts:
            inputs = FEATURES
        self.inputs_ = select_inputs(train, inputs)
        self.view_dims_ = ({name: int(v.shape[1]) for name, v in train.feature_views.items()}
                           if self.inputs_ == FEATURES else {})
        self.view_names_ = tuple(self.view_dims_)
        self.n_labels_ = train.n_labels
        self._n_train = train.n_samples
        if self.param("cache_features") and not (self.inputs_ == IMAGE and self.param("freeze_backbone")):
            raise BenchError(f"method {self.name!r}: cache_features needs a frozen backbone on an image view "
                             "(freeze_backbone=True, inputs='image')")
        self.setup(train)                                                   # hook 1
        self.model_ = self.build_model(train).to(self.device_)
        # NHWC: tensor-core convolutions on CUDA, and oneDNN's faster blocked kernels on the CPU
        # (the small CNN trains ~1.8x faster per image on one core; benchmarks/bench_cpu_methods.py)
        if self.inputs_ == IMAGE and self.param("channels_last"):
            self.model_.to(memory_format=torch.channels_last)
            self.encoder_.channels_last = True
        if self.param("cache_features"):
            from bench.feature_cache import SpatialFeatureCache

            self.feature_cache_ = SpatialFeatureCache.for_backbone(
                self.encoder_.backbone, self.test_transform(native_size(train.image_view)))
        return train, val

    def finish_fit(self, history: list[dict], best_epoch: int, val: MultiLabelData | None) -> DeepMethod:
        """The last part of :meth:`fit`, once the weights are final: the history, eval mode,
        :meth:`calibrate`."""
        self.history_, self.best_epoch_ = history, best_epoch
        self.model_.eval()
        self.calibrate(val)                                                 # hook 6
        return self

    def validate(self, val: MultiLabelData) -> dict[str, float]:
        """``val_loss`` and ``val_<term>`` (means per example) and every ``val_<metric>``."""
        model = self._eval_model()
        reuse = self._scores_from_training_forward()
        sums: dict[str, float] = {}
        chunks = []
        with _eval_mode(model), torch.no_grad():
            for batch in self._source(val, train=False).batches(self._eval_index_batches(val.n_samples)):
                with self.autocast():
                    outputs = self.forward_train(model, batch)
                outputs = full_precision(outputs)
                total, terms = self.compute_loss(outputs, batch.y)
                for key, value in {"loss": total, **terms}.items():
                    sums[key] = sums.get(key, 0.0) + float(value) * len(batch)
                if reuse:
                    chunks.append(self.scores(outputs).float().cpu().numpy())
        record = {f"val_{k}": v / max(val.n_samples, 1) for k, v in sums.items()}
        scores = np.concatenate(chunks) if reuse else self.predict_scores(val)
        y_pred = self.predict(val) if self._decodes() else (scores >= self.threshold).astype(np.uint8)
        metrics = evaluate(val.Y, scores, y_pred, ignore=val.ignore)
        record.update({f"val_{k}": float(v) for k, v in metrics.items()})
        return record

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        def fn(model, batch):
            return self.scores(full_precision(self.forward_eval(model, batch)))

        scores = self.map_batches(data, fn)
        return (scores if scores is not None else np.zeros((0, self.n_labels_))).astype(np.float64)

    def predict(self, data: MultiLabelData) -> np.ndarray:
        decoded = self.map_batches(data, lambda model, batch: self.decode(model, batch).to(torch.uint8))
        return (decoded if decoded is not None else np.zeros((0, self.n_labels_))).astype(np.uint8)

    def predict_outputs(self, data: MultiLabelData) -> dict[str, np.ndarray]:
        """Every output of the network for ``data`` (float32 arrays concatenated over batches)."""
        return self.map_batches(data, lambda model, batch: full_precision(self.forward_eval(model, batch))) or {}

    def class_maps(self, data: MultiLabelData) -> np.ndarray:
        """The head's ``"class_maps"`` output (non-negative, [B, L, N]) as maps [n, L, h, w] on the
        backbone grid: DER's class-aware maps, attention maps."""
        if not isinstance(getattr(self, "model_", None), TokenNetwork):
            raise NoClassMaps(f"method {self.name!r}: class maps need a fitted token network")

        def fn(model, batch):
            outputs = self.forward_eval(model, batch)
            if "class_maps" not in outputs:
                raise NoClassMaps(f"method {self.name!r}: its network gives no 'class_maps' output")
            return outputs["class_maps"]

        maps = self.map_batches(data, fn)
        if maps is None:
            return np.zeros((0, self.n_labels_, *self.encoder_.grid), np.float32)
        return maps.reshape(len(maps), maps.shape[1], *self.encoder_.grid)

    # ------------------------------------------------------------------ internals
    def _check_params(self) -> None:
        missing = [p for p in REQUIRED_PARAMS if not hasattr(self, p)]
        if missing:
            raise BenchError(f"method {self.name!r}: DeepMethod needs constructor argument(s) {', '.join(missing)}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
                raise BenchError(f"method {self.name!r}: {name} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, int | float) and self.lr > 0):
            raise BenchError(f"method {self.name!r}: lr must be positive, got {self.lr!r}")
        patience = self.param("patience")
        if patience is not None and (not isinstance(patience, int | np.integer) or isinstance(patience, bool)
                                     or patience < 1):
            raise BenchError(f"method {self.name!r}: patience must be a positive integer or None, got {patience!r}")
        if self.param("monitor") not in MONITORS:
            raise BenchError(f"method {self.name!r}: monitor must be one of {', '.join(MONITORS)}, "
                             f"got {self.param('monitor')!r}")

    def _eval_model(self) -> nn.Module:
        if not hasattr(self, "model_"):
            raise BenchError(f"method {self.name!r}: predict called before fit")
        ema = getattr(self, "_ema", None)
        return ema.module if ema is not None else self.model_

    def _steps_per_epoch(self) -> int:
        """Updates per epoch of the default batches (for per-step schedules)."""
        steps = n_batches(self._n_train, self.batch_size)
        return min(steps, int(self.param("steps_per_epoch"))) if self.param("steps_per_epoch") else steps

    def _decodes(self) -> bool:
        return type(self).decode is not DeepMethod.decode

    def _scores_from_training_forward(self) -> bool:
        """Whether validation scores may come from the same pass as the validation loss: only when
        training and prediction share their forward pass and scoring."""
        cls = type(self)
        return (cls.forward_train is DeepMethod.forward_train and cls.forward_eval is DeepMethod.forward_eval
                and cls.predict_scores is DeepMethod.predict_scores)

    def _image_side(self, native: tuple[int, int] | None) -> int:
        size = self.param("image_size")
        if size:
            return int(size)
        if native is not None:
            if native[0] != native[1] and self.param("resize") is None:
                return max(native)  # non-square arrays: square them (the tokens need one grid)
            return int(native[0])
        return DEFAULT_FILE_IMAGE_SIZE

    def _eval_index_batches(self, n: int) -> list[np.ndarray]:
        size = int(self.param("eval_batch_size") or 2 * self.batch_size)
        return [np.arange(s, min(s + size, n)) for s in range(0, n, size)]

    def _source(self, data: MultiLabelData, train: bool):
        """Where the batches of ``data`` come from: feature tensors on the device, cached backbone
        maps, or an image loader (one per fit and purpose, so loader workers persist)."""
        cache = getattr(self, "_sources", None)
        key = (id(data), train)
        if cache is not None and key in cache:
            return cache[key][1]
        if self.inputs_ == FEATURES:
            source = _FeatureSource(data, self.view_dims_, self.device_, self.name)
        else:
            view = data.image_view
            if view is None:
                raise BenchError(f"dataset {data.name!r} has no image view; the model was fitted on images")
            if self.param("cache_features"):
                source = _MapSource(self.feature_cache_.maps(view, self._extract_maps), data.Y, self.device_)
            else:
                native = native_size(view)
                transform = self.train_transform(native) if train else self.test_transform(native)
                source = ImageSource(view, data.Y, transform, int(self.random_state or 0), self.device_,
                                      self.param("num_workers"))
        if cache is not None:
            cache[key] = (data, source)  # holding data keeps its id unique while cached
        return source

    def _extract_maps(self, view) -> np.ndarray:
        """The frozen backbone's maps of ``view``'s images (test transform, float32, eval mode)."""
        source = ImageSource(view, np.zeros((len(view), 0), np.float32), self.test_transform(native_size(view)), 0,
                              self.device_, self.param("num_workers"))
        encoder = self.encoder_
        chunks = []
        with _eval_mode(encoder), torch.no_grad():
            for batch in source.batches(self._eval_index_batches(len(view))):
                chunks.append(encoder.backbone_map(batch.inputs).float().cpu().numpy())
        return np.concatenate(chunks)


# ----------------------------------------------------------------------------- batch sources
class _FeatureSource:
    """The feature views (by name, in the fitted order) and labels, moved to the device once."""

    def __init__(self, data: MultiLabelData, dims: dict[str, int], device: torch.device, method: str):
        got = {name: int(v.shape[1]) for name, v in data.feature_views.items() if name in dims}
        if got != dims:
            raise BenchError(f"method {method!r} was fitted on the feature views {dims}; dataset {data.name!r} "
                             f"has {({name: int(v.shape[1]) for name, v in data.feature_views.items()})}")
        self.views = [torch.as_tensor(data.views[v], dtype=torch.float32, device=device) for v in dims]
        self.Y = torch.as_tensor(data.Y, dtype=torch.float32, device=device)
        self.device = device

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[Batch]:
        if not index_batches:
            return
        sizes = [len(b) for b in index_batches]
        flat = torch.as_tensor(np.concatenate(index_batches), dtype=torch.long, device=self.device)  # one copy
        for idx in flat.split(sizes):
            yield Batch(tuple(v[idx] for v in self.views), self.Y[idx], idx)


class _MapSource:
    """Cached backbone maps (float16 on disk, float32 on the device) and labels."""

    def __init__(self, maps, Y: np.ndarray, device: torch.device):
        self.maps, self.Y, self.device = maps, torch.as_tensor(Y, dtype=torch.float32), device

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[Batch]:
        for b in index_batches:
            x = torch.from_numpy(self.maps.gather(b)).to(self.device, non_blocking=True).float()
            idx = torch.as_tensor(b, dtype=torch.long)
            yield Batch(x, self.Y[idx].to(self.device), idx.to(self.device))


class ImageSource:
    """A DataLoader over the images (decoding and augmentation in workers) fed the index batches."""

    def __init__(self, view, Y: np.ndarray, transform: ImageTransform, seed: int, device: torch.device,
                 num_workers: int | None):
        self.sampler = IndexBatches()
        self.device = device
        self.loader = make_loader(view, Y, transform, seed=seed, num_workers=num_workers,
                                  pin_memory=device.type == "cuda", batch_sampler=self.sampler)

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[Batch]:
        self.sampler.batches = index_batches
        for images, y, idx in self.loader:
            yield Batch(images.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True),
                        idx.to(self.device))


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


def _concatenate(parts: list):
    """Concatenate per-batch tensors (or dicts of them) as float32 / uint8 numpy; None when empty."""
    if not parts:
        return None
    if isinstance(parts[0], dict):
        return {k: _concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays = [p.detach().cpu() for p in parts]
    arrays = [a.float() if a.is_floating_point() else a for a in arrays]
    return np.concatenate([a.numpy() for a in arrays])
