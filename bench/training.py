"""The one training loop of every deep method.

:func:`train_loop` runs a method's :class:`Stage` s one after the other (most methods have one;
RETDM trains the classification path, then the label network with the classifier frozen, then
everything jointly). A stage owns its optimizer, LR schedule, number of epochs, trainable
parameters and per-batch update. Every batch is a :class:`Batch` (inputs, labels and the example
indices it was drawn from). For each batch the loop either

* takes ``(total, terms) = stage.loss(batch)`` and does one backward pass and one optimizer step
  (gradient clipping optional), or
* hands the batch to ``stage.update(batch, optimizer)``, which does its own backward passes and
  optimizer steps (RMLC's Algorithm 1: one step per modality) and returns ``(total, terms)``,

then steps a per-step scheduler and calls the per-step callbacks with the model (an EMA of the
weights, :class:`EMA`). After each epoch it

* records ``{"epoch", "lr", "time_s", "loss", <mean of each loss term>, "val_<key>"...}`` in the
  history (``history_`` of the method: the convergence plots' data; epochs are counted from 1 over
  all stages, and a record carries ``"stage"`` when there are several);
* steps a per-epoch scheduler, with the monitored value for a metric-driven one
  (``ReduceLROnPlateau`` on ``val_loss`` by default);
* calls the epoch callbacks with that record;
* feeds the monitored validation value to an :class:`~bench.torch_utils.EarlyStopping`, whose
  best weights are restored at the end of the stage (validation data come from the *training
  fold only*). Whether higher or lower is better follows from the name (:func:`higher_is_better`).

On CUDA the forward pass runs under bf16 autocast when ``amp`` is on (no loss scaling needed:
bf16 has float32's exponent range); the losses are always computed in float32, outside autocast
(:func:`full_precision`). On CPU autocast is off, so results are plain float32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.metrics import LOWER_IS_BETTER, METRICS
from bench.torch_utils import EarlyStopping

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One mini-batch on the device.

    ``inputs``: uint8 images [B, 3, H, W], a tuple of float32 feature views [B, d_m] (in the
    order of the names the model was fitted on), or float32 backbone maps [B, C, h, w] (cached
    frozen features); ``y``: float32 {0,1} labels [B, L]; ``index``: long [B], the position of
    each example in the dataset the batch was drawn from (the training part during training).
    """

    inputs: object
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


#: loss(batch) -> (total loss with gradient, {term name: value})
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: update(batch, optimizer) -> (total, {term name: value}) after doing its own backward and steps
UpdateFn = Callable[[Batch, torch.optim.Optimizer], tuple[torch.Tensor, dict[str, torch.Tensor]]]
#: callback(model, batch), called after every update
StepCallback = Callable[[nn.Module, Batch], None]


@dataclass
class Stage:
    """One phase of training with its own optimizer, schedule, epochs, parameters and loss.

    * ``trainable``: the parameters this stage trains; every other parameter of the model gets
      ``requires_grad=False`` for the stage (and back afterwards). None: all of them. (BatchNorm
      statistics of frozen layers still move in train mode; a method that must keep them puts
      those modules in eval mode itself.)
    * ``loss`` or ``update`` (exactly one): see the module docstring.
    * ``scheduler_interval``: ``"epoch"`` or ``"step"``; ``scheduler_monitor``: the history key a
      metric-driven scheduler is stepped with (default ``"val_loss"`` for ``ReduceLROnPlateau``).
    * ``patience``: early stopping within this stage on ``LoopConfig.monitor`` (None: none).
    """

    name: str
    epochs: int
    optimizer: torch.optim.Optimizer
    loss: LossFn | None = None
    update: UpdateFn | None = None
    scheduler: object = None
    scheduler_interval: str = "epoch"
    scheduler_monitor: str | None = None
    trainable: Sequence[nn.Parameter] | None = None
    patience: int | None = None

    def __post_init__(self):
        where = f"training stage {self.name!r}"
        if (self.loss is None) == (self.update is None):
            raise BenchError(f"{where}: give exactly one of loss or update")
        if not isinstance(self.epochs, int | np.integer) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise BenchError(f"{where}: epochs must be an integer >= 0, got {self.epochs!r}")
        if self.scheduler_interval not in ("epoch", "step"):
            raise BenchError(f"{where}: scheduler_interval must be 'epoch' or 'step', got {self.scheduler_interval!r}")
        if self.scheduler_monitor is None and isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler_monitor = "val_loss"
        if self.scheduler_monitor is not None and self.scheduler_interval != "epoch":
            raise BenchError(f"{where}: a metric-driven scheduler steps once per epoch (scheduler_interval='epoch')")


@dataclass
class LoopConfig:
    """What the loop needs besides the model and stages: ``device``, ``amp`` (bf16 autocast on
    CUDA), ``steps_per_epoch`` (a cap on the batches of an epoch; None: all), ``monitor`` (the
    history key early stopping watches), ``grad_clip`` (max gradient norm), per-epoch and
    per-step callbacks."""

    device: torch.device
    amp: bool = True
    steps_per_epoch: int | None = None
    monitor: str = "val_mAP"
    grad_clip: float | None = None
    verbose: bool = False
    callbacks: list[Callable[[dict], None]] = field(default_factory=list)
    step_callbacks: list[StepCallback] = field(default_factory=list)


@dataclass
class LoopResult:
    history: list[dict]
    best_epoch: int  # the epoch whose weights the model ends with (last stage)


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(outputs):
    """The outputs of a forward pass (a tensor or a dict of them) with every half-precision tensor
    cast to float32 (float32 and float64 stay as they are), for the losses: squared distances of
    nearby vectors and log-sigmoids near 0 or 1 lose too much in bf16."""
    if isinstance(outputs, dict):
        return {k: full_precision(v) for k, v in outputs.items()}
    if torch.is_tensor(outputs) and outputs.dtype in (torch.bfloat16, torch.float16):
        return outputs.float()
    return outputs


def higher_is_better(key: str) -> bool:
    """Direction of a history key: ``val_<metric>`` follows the metric (``bench.metrics``); every
    other key (``val_loss``, ``val_<loss term>``, ``loss``) is a loss, lower is better."""
    name = key[4:] if key.startswith("val_") else key
    return name in METRICS and name not in LOWER_IS_BETTER


class EMA:
    """Exponential moving average of a model's weights and buffers, updated after every step:
    ``ema = decay * ema + (1 - decay) * weights``, starting from the weights at construction (the
    ``ModelEma`` of ASL's training script, as CMSG trains). Built on
    :class:`torch.optim.swa_utils.AveragedModel`; ``module`` is the averaged copy.

    ``warmup=True`` uses ``min(decay, (1 + t) / (10 + t))`` at the t-th update (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``), so that a short run's average is not
    dominated by the initial weights (0.9997 ** 600 = 0.84 of them after 600 steps)."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        if not 0 <= decay < 1:
            raise BenchError(f"EMA decay must be in [0, 1), got {decay!r}")
        self.decay, self.warmup, self.updates = float(decay), bool(warmup), 0

        def average(averaged, current, n_averaged):
            get_ema_multi_avg_fn(self.current_decay())(averaged, current, n_averaged)

        self.averaged = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
        self.averaged.update_parameters(model)  # the first update copies: the average starts at the weights now

    def current_decay(self) -> float:
        """The decay of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    def __call__(self, model: nn.Module, batch: Batch) -> None:
        self.averaged.update_parameters(model)
        self.updates += 1


def train_loop(model: nn.Module, stages: Sequence[Stage], batches: Callable[[int], Iterable[Batch]],
               config: LoopConfig, validate: Callable[[], dict[str, float]] | None = None,
               eval_model: Callable[[], nn.Module] | None = None) -> LoopResult:
    """Train ``model`` through ``stages`` and return the per-epoch history.

    ``batches(epoch)`` yields :class:`Batch` es already on the device (a new shuffle per epoch,
    epochs counted from 1); ``validate()`` returns metrics named ``val_*`` (the loop calls it in
    eval mode, without gradients). ``eval_model()`` is the network validation and early stopping
    see (the EMA copy when there is one; default ``model``).
    """
    eval_model = eval_model or (lambda: model)
    for stage in stages:
        _check_stage(stage, config, validate)
    history: list[dict] = []
    best_epoch = 0
    for stage in stages:
        best_epoch = _run_stage(model, stage, batches, config, validate, eval_model, history,
                                multi_stage=len(stages) > 1)
    return LoopResult(history, best_epoch)


def _check_stage(stage: Stage, config: LoopConfig, validate) -> None:
    """Errors the loop would otherwise hit after the first epoch, raised before any work."""
    where = f"training stage {stage.name!r}"
    if validate is None:
        if stage.patience is not None:
            raise BenchError(f"{where}: early stopping (patience) needs validation data (val_fraction > 0)")
        if stage.scheduler_monitor and stage.scheduler_monitor.startswith("val_"):
            raise BenchError(f"{where}: the scheduler is stepped with {stage.scheduler_monitor!r}, which needs "
                             "validation data (val_fraction > 0)")


def _run_stage(model, stage: Stage, batches, config: LoopConfig, validate, eval_model, history: list,
               multi_stage: bool) -> int:
    stopper = EarlyStopping(patience=int(stage.patience)) if stage.patience is not None else None
    sign = 1.0 if higher_is_better(config.monitor) else -1.0
    frozen = _freeze_all_but(model, stage.trainable)
    last_epoch = history[-1]["epoch"] if history else 0
    try:
        for epoch in range(last_epoch + 1, last_epoch + stage.epochs + 1):
            record = _run_epoch(model, stage, batches(epoch), config, epoch)
            if multi_stage:
                record = {"epoch": epoch, "stage": stage.name, **{k: v for k, v in record.items() if k != "epoch"}}
            t0 = time.perf_counter()
            if validate is not None:
                evaluated = eval_model()
                evaluated.eval()
                with torch.no_grad():
                    record.update(validate())
            if stage.scheduler is not None and stage.scheduler_interval == "epoch":
                if stage.scheduler_monitor is not None:
                    stage.scheduler.step(_lookup(record, stage.scheduler_monitor, "the scheduler"))
                else:
                    stage.scheduler.step()
            record["time_s"] += time.perf_counter() - t0
            history.append(record)
            if config.verbose:
                log.info("epoch %d: %s", epoch, ", ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "epoch"))
            for callback in config.callbacks:
                callback(record)
            if stopper is not None:
                score = sign * _lookup(record, config.monitor, "early stopping")
                if stopper.step(score if math.isfinite(score) else -math.inf, epoch, eval_model()):
                    break
    finally:
        for p in frozen:
            p.requires_grad_(True)
    if stopper is not None:
        stopper.restore(eval_model())
        return stopper.best_epoch
    return history[-1]["epoch"] if history else 0


def _run_epoch(model, stage: Stage, batches: Iterable[Batch], config: LoopConfig, epoch: int) -> dict:
    t0 = time.perf_counter()
    model.train()
    sums: dict[str, torch.Tensor] = {}
    n_steps = 0
    lr = stage.optimizer.param_groups[0]["lr"]
    for batch in batches:
        if config.steps_per_epoch is not None and n_steps >= config.steps_per_epoch:
            break
        if stage.update is not None:
            total, terms = stage.update(batch, stage.optimizer)
            _check_finite(total, epoch, n_steps)
        else:
            total, terms = stage.loss(batch)
            _check_finite(total, epoch, n_steps)
            stage.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            stage.optimizer.step()
        if stage.scheduler is not None and stage.scheduler_interval == "step":
            stage.scheduler.step()
        for callback in config.step_callbacks:
            callback(model, batch)
        for name, value in {"loss": total, **terms}.items():  # summed on the device: one sync per epoch
            value = torch.as_tensor(value).detach().float()
            sums[name] = sums[name] + value if name in sums else value
        n_steps += 1
    if n_steps == 0:
        raise BenchError("training: an epoch produced no batch (empty training set?)")
    means = {k: float(v) / n_steps for k, v in sums.items()}
    return {"epoch": epoch, "lr": lr, **means, "time_s": time.perf_counter() - t0}


def _check_finite(total: torch.Tensor, epoch: int, step: int) -> None:
    if not torch.isfinite(total):
        raise BenchError(f"training diverged: loss is {float(total)} at epoch {epoch}, step {step + 1}; "
                         "lower the learning rate (--set lr=...)")


def _freeze_all_but(model: nn.Module, trainable: Sequence[nn.Parameter] | None) -> list[nn.Parameter]:
    """Switch off the gradients of every parameter not in ``trainable``; the ones switched off."""
    if trainable is None:
        return []
    keep = {id(p) for p in trainable}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    return frozen


def _lookup(record: dict, key: str, who: str) -> float:
    if key not in record:
        raise BenchError(f"{who} monitors {key!r}, which the epoch record lacks (it has {', '.join(record)})")
    return float(record[key])


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
