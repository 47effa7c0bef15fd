"""Shared torch helpers: validation carve-out, early stopping, mini-batches, device names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.protocols import validation_split
from bench.torch_utils import EarlyStopping, minibatches, n_batches, torch_device


def test_validation_split_partitions_the_training_fold_with_every_label():
    rng = np.random.default_rng(0)
    Y = (rng.random((100, 3)) < [0.1, 0.3, 0.5]).astype(np.uint8)
    ids = np.arange(100, dtype=np.float32)[:, None]  # the feature is the row id, to trace rows
    train = MultiLabelData("d", {"id": ids}, Y, ("a", "b", "c"))
    fit, val = validation_split(train, 0.2, seed=0)
    fit_ids, val_ids = fit.views["id"][:, 0], val.views["id"][:, 0]
    assert len(val_ids) == 20 and len(fit_ids) == 80
    assert sorted(np.r_[fit_ids, val_ids].tolist()) == list(range(100))
    assert (val.Y.sum(axis=0) > 0).all()  # stratified: the rare label reaches the validation part
    again, _ = validation_split(train, 0.2, seed=0)
    assert np.array_equal(again.views["id"], fit.views["id"])
    with pytest.raises(BenchError, match=r"validation fraction must be in \(0, 1\), got 1.5"):
        validation_split(train, 1.5, seed=0)


def test_early_stopping_keeps_and_restores_the_best_weights():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=2)
    decisions = []
    for epoch, score in enumerate([0.1, 0.5, 0.4, 0.3]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        decisions.append(stopper.step(score, epoch, model))
    assert decisions == [False, False, False, True] and stopper.best_epoch == 1
    stopper.restore(model)
    assert model.weight.item() == 1.0


def test_minibatches_cover_every_index_once():
    batches = list(minibatches(10, 4, shuffle=True, generator=np.random.default_rng(0)))
    assert [len(b) for b in batches] == [4, 4, 2] == [4, 4, 2][: n_batches(10, 4)]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))


def test_device_names():
    assert torch_device("cpu").type == "cpu"
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="torch sees no CUDA device"):
            torch_device("cuda:0")
