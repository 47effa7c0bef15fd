"""Small building blocks shared by every torch method: device, minibatches, early stopping
(the validation carve-out is :func:`bench.protocols.validation_split`).

Kept in one place so that each method file holds only its paper's model and losses.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from bench.errors import BenchError


def torch_device(device: str) -> torch.device:
    """``"auto"`` -> the first GPU when torch sees one, else the CPU; other names are checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"device {device!r}: torch sees no CUDA device on this machine")
    return dev


def minibatches(n: int, batch_size: int, shuffle: bool, generator: np.random.Generator | None = None):
    """Index arrays covering ``range(n)`` in batches (the last one may be smaller)."""
    order = generator.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def n_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


@dataclass
class EarlyStopping:
    """Keep the best weights by a validation score (higher is better) and say when to stop.

    ``patience`` epochs without an improvement larger than ``min_delta`` end training; the best
    state is restored by :meth:`restore`.
    """

    patience: int = 10
    min_delta: float = 0.0
    best_score: float = -math.inf
    best_epoch: int = -1
    _best_state: dict | None = field(default=None, repr=False)

    def step(self, score: float, epoch: int, model: torch.nn.Module) -> bool:
        """Record this epoch's score; True when training should stop."""
        if score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch = score, epoch
            self._best_state = copy.deepcopy(model.state_dict())
        return epoch - self.best_epoch >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        if self._best_state is not None:
            model.load_state_dict(self._best_state)
