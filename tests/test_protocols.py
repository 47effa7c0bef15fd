"""Splits: k-fold iterative stratification, official and hold-out protocols."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.protocols import make_splits


def dataset(n=200, L=5, seed=0, **kw):
    rng = np.random.default_rng(seed)
    Y = (rng.random((n, L)) < np.linspace(0.1, 0.5, L)).astype(np.uint8)
    return MultiLabelData("d", {"f": rng.normal(size=(n, 2))}, Y, tuple("abcde"[:L]), **kw)


def test_kfold_partitions_every_example_once_and_stratifies():
    data = dataset()
    splits = make_splits(data, "kfold", n_folds=10, seeds=(0,))
    assert [s.fold for s in splits] == list(range(10))
    tests = np.concatenate([s.test for s in splits])
    assert np.array_equal(np.sort(tests), np.arange(200))
    for s in splits:
        assert np.intersect1d(s.train, s.test).size == 0 and s.train.size + s.test.size == 200
        # Iterative stratification keeps each label's positive count per fold within 1-2 of n/10.
        per_fold = data.Y[s.test].sum(axis=0)
        assert np.all(np.abs(per_fold - data.Y.sum(axis=0) / 10) <= 2)


def test_kfold_is_seeded_and_reproducible():
    data = dataset()
    a = make_splits(data, "kfold", n_folds=5, seeds=(0,))
    b = make_splits(data, "kfold", n_folds=5, seeds=(0,))
    c = make_splits(data, "kfold", n_folds=5, seeds=(1,))
    assert [s.hash for s in a] == [s.hash for s in b]
    assert [s.hash for s in a] != [s.hash for s in c]
    assert len(make_splits(data, "kfold", n_folds=5, seeds=(0, 1))) == 10


def test_official_split_repeats_over_seeds():
    idx = np.arange(200)
    data = dataset(protocol="official", splits={"train": idx[:150], "test": idx[150:]})
    splits = make_splits(data)  # the dataset's own protocol, default seeds 0,1,2
    assert [s.seed for s in splits] == [0, 1, 2]
    assert all(np.array_equal(s.test, idx[150:]) for s in splits)
    with pytest.raises(BenchError, match="has no official train/test split"):
        make_splits(dataset(), "official")


def test_holdout_is_random_80_20_per_seed():
    splits = make_splits(dataset(), "holdout", seeds=(0, 1))
    assert all(s.test.size == 40 and s.train.size == 160 for s in splits)
    assert not np.array_equal(np.sort(splits[0].test), np.sort(splits[1].test))


def test_bad_protocol_arguments():
    with pytest.raises(BenchError, match="unknown protocol 'loo'"):
        make_splits(dataset(), "loo")
    with pytest.raises(BenchError, match="--folds must be between 2 and the 200 examples, got 1"):
        make_splits(dataset(), "kfold", n_folds=1)
