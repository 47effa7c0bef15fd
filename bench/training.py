"""The one training loop of every deep method.

:func:`train_loop` runs epochs of mini-batch steps given a method's ``step`` (inputs, labels ->
total loss and named loss terms), optimizer and LR schedule, and after each epoch:

* records ``{"epoch", "lr", "time_s", <mean of each loss term>, "val_<metric>"...}`` in the
  history (``history_`` of the method: the convergence plots' data);
* calls the epoch callbacks with that record;
* feeds the validation score to an :class:`~bench.torch_utils.EarlyStopping`, whose best weights
  are restored at the end (validation data come from the *training fold only*).

On CUDA the forward pass and loss run under bf16 autocast (no loss scaling needed: bf16 has
float32's exponent range); on CPU autocast is off, so results are plain float32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from bench.errors import BenchError
from bench.torch_utils import EarlyStopping

log = logging.getLogger(__name__)

#: step(inputs, y) -> (total loss, {term name: value})
StepFn = Callable[[object, torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


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


@dataclass
class LoopConfig:
    """What the loop needs besides the model: ``epochs``; ``steps_per_epoch`` caps the batches of an
    epoch (None: the whole loader; used by smoke tests); ``scheduler_interval`` "epoch" or "step";
    ``monitor`` the history key early stopping maximises; ``grad_clip`` a max gradient norm."""

    epochs: int
    device: torch.device
    amp: bool = True
    steps_per_epoch: int | None = None
    scheduler_interval: str = "epoch"
    monitor: str = "val_map"
    grad_clip: float | None = None
    verbose: bool = False
    callbacks: list[Callable[[dict], None]] = field(default_factory=list)


def train_loop(model: nn.Module, batches: Callable[[int], Iterable], step: StepFn,
               optimizer: torch.optim.Optimizer, scheduler, config: LoopConfig,
               validate: Callable[[], dict[str, float]] | None = None,
               early_stopping: EarlyStopping | None = None) -> list[dict]:
    """Train ``model`` and return its per-epoch history.

    ``batches(epoch)`` yields ``(inputs, y)`` already on the device (a new shuffle per epoch);
    ``validate()`` returns metrics named ``val_*`` (evaluated in eval mode, without gradients).
    With ``early_stopping`` the model ends with the weights of its best epoch by ``config.monitor``.
    """
    if config.scheduler_interval not in ("epoch", "step"):
        raise BenchError(f"scheduler_interval must be 'epoch' or 'step', got {config.scheduler_interval!r}")
    history: list[dict] = []
    for epoch in range(config.epochs):
        t0 = time.perf_counter()
        model.train()
        sums: dict[str, float] = {}
        n_steps = 0
        lr = optimizer.param_groups[0]["lr"]
        for inputs, y in batches(epoch):
            if config.steps_per_epoch is not None and n_steps >= config.steps_per_epoch:
                break
            with autocast(config.device, config.amp):
                total, terms = step(inputs, y)
            if not torch.isfinite(total):
                raise BenchError(f"training diverged: loss is {float(total)} at epoch {epoch + 1}, "
                                 f"step {n_steps + 1}; lower the learning rate (--set lr=...)")
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            if scheduler is not None and config.scheduler_interval == "step":
                scheduler.step()
            for name, value in {"loss": total, **terms}.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            n_steps += 1
        if n_steps == 0:
            raise BenchError("training: an epoch produced no batch (empty training set?)")
        if scheduler is not None and config.scheduler_interval == "epoch":
            scheduler.step()
        record = {"epoch": epoch + 1, "lr": lr, **{k: v / n_steps for k, v in sums.items()}}
        if validate is not None:
            model.eval()
            with torch.no_grad():
                record.update(validate())
        record["time_s"] = time.perf_counter() - t0
        history.append(record)
        if config.verbose:
            log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={_fmt(v)}" for k, v in record.items() if k != "epoch"))
        for callback in config.callbacks:
            callback(record)
        if early_stopping is not None:
            if config.monitor not in record:
                raise BenchError(f"early stopping monitors {config.monitor!r}, which the epoch record lacks "
                                 f"(it has {', '.join(record)})")
            score = record[config.monitor]
            if early_stopping.step(score if math.isfinite(score) else -math.inf, epoch, model):
                break
    if early_stopping is not None:
        early_stopping.restore(model)
    return history


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def macro_average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean AP over labels with at least one positive (the validation metric of the image papers;
    NaN when no label has a positive)."""
    from sklearn.metrics import average_precision_score

    y_true = np.asarray(y_true)
    keep = y_true.sum(axis=0) > 0
    if not keep.any():
        return float("nan")
    return float(average_precision_score(y_true[:, keep], np.asarray(scores)[:, keep], average="macro"))
