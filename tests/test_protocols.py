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


# ------------------------------------------------------------------ guards against silent leaks
def assert_partition(split, n):
    """Train and test disjoint, each without repeats, together every example exactly once."""
    assert np.intersect1d(split.train, split.test).size == 0
    assert len(set(split.train.tolist())) == split.train.size and len(set(split.test.tolist())) == split.test.size
    assert np.array_equal(np.sort(np.concatenate([split.train, split.test])), np.arange(n))


def test_holdout_parts_are_disjoint_and_cover_the_data():
    for split in make_splits(dataset(n=50), "holdout", seeds=(0, 1, 2)):
        assert (split.train.size, split.test.size) == (40, 10)
        assert_partition(split, 50)


def test_official_parts_are_the_datasets_own_indices():
    # A hand-built split that is neither contiguous nor sorted, and leaves examples out of both parts.
    train, test = np.array([7, 3, 11, 0, 5, 9]), np.array([2, 8, 1])
    data = dataset(n=12, protocol="official", splits={"train": train, "test": test})
    for split in make_splits(data, seeds=(4,)):
        assert split.train.tolist() == [7, 3, 11, 0, 5, 9] and split.test.tolist() == [2, 8, 1]
        assert np.intersect1d(split.train, split.test).size == 0


def test_kfold_train_part_is_everything_but_the_test_fold():
    for split in make_splits(dataset(n=30), "kfold", n_folds=3, seeds=(0,)):
        assert_partition(split, 30)
        assert split.train.size == 20


def test_split_hash_covers_the_training_part():
    """Two splits with the same test part but another training part must never share a result."""
    test = np.array([8, 9])
    full = dataset(n=10, protocol="official", splits={"train": np.arange(8), "test": test})
    fewer = dataset(n=10, protocol="official", splits={"train": np.arange(1, 8), "test": test})
    other = dataset(n=10, protocol="official", splits={"train": np.array([0, 1, 2, 3, 4, 5, 6, 7]), "test": test})
    (a,), (b,), (c,) = (make_splits(d, seeds=(0,)) for d in (full, fewer, other))
    assert a.hash != b.hash
    assert a.hash == c.hash  # the same indices give the same digest
    swapped = dataset(n=10, protocol="official", splits={"train": np.arange(2, 10), "test": np.array([0, 1])})
    # The same training part, another test part (disjoint from it: overlapping splits are refused).
    moved = dataset(n=11, protocol="official", splits={"train": np.arange(8), "test": np.array([8, 10])})
    hashes = {a.hash, make_splits(swapped, seeds=(0,))[0].hash, make_splits(moved, seeds=(0,))[0].hash}
    assert len(hashes) == 3


def test_each_protocols_default_seeds():
    idx = np.arange(40)
    official = dataset(n=40, protocol="official", splits={"train": idx[:30], "test": idx[30:]})
    assert [(s.seed, s.fold) for s in make_splits(official)] == [(0, 0), (1, 0), (2, 0)]
    assert [s.seed for s in make_splits(dataset(n=40), "holdout")] == [0, 1, 2, 3, 4]
    kfold = make_splits(dataset(n=40), "kfold", n_folds=4)
    assert [(s.seed, s.fold) for s in kfold] == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert make_splits(dataset(n=40), "kfold", n_folds=4, seeds=(3,))[0].seed == 3


def test_each_split_says_what_it_is():
    idx = np.arange(20)
    (official,) = make_splits(dataset(n=20, protocol="official", splits={"train": idx[:15], "test": idx[15:]}),
                              seeds=(2,))
    (holdout,) = make_splits(dataset(n=20), "holdout", seeds=(3,))
    kfold = make_splits(dataset(n=20), "kfold", n_folds=4, seeds=(1,))
    assert (official.protocol, official.seed, official.fold, official.n_folds) == ("official", 2, 0, 1)
    assert (holdout.protocol, holdout.seed, holdout.fold, holdout.n_folds) == ("holdout", 3, 0, 1)
    assert [(s.protocol, s.seed, s.fold, s.n_folds) for s in kfold] == [("kfold", 1, f, 4) for f in range(4)]


def test_ten_folds_by_default_and_as_many_folds_as_examples_at_most():
    assert len(make_splits(dataset(n=40), "kfold")) == 10
    leave_one_out = make_splits(dataset(n=12), "kfold", n_folds=12)
    assert sorted(int(s.test[0]) for s in leave_one_out) == list(range(12))
    with pytest.raises(BenchError, match="between 2 and the 12 examples, got 13"):
        make_splits(dataset(n=12), "kfold", n_folds=13)


def test_holdout_is_reproducible_for_a_seed():
    a, b = (make_splits(dataset(n=50), "holdout", seeds=(7,))[0] for _ in range(2))
    assert a.train.tolist() == b.train.tolist() and a.test.tolist() == b.test.tolist()


def test_an_unknown_protocol_names_the_known_ones():
    with pytest.raises(BenchError, match=r"^unknown protocol 'loo'; choose one of kfold, official, holdout$"):
        make_splits(dataset(), "loo")


@pytest.mark.parametrize("empty", ["train", "test"])
def test_an_empty_official_part_is_refused_by_name(empty):
    parts = {"train": np.arange(150), "test": np.arange(150, 200)}
    parts[empty] = np.array([], dtype=int)
    with pytest.raises(BenchError) as err:
        make_splits(dataset(splits=parts), "official", seeds=(0,))
    assert str(err.value) == f"dataset 'd': its official {empty} split is empty; use --protocol kfold or holdout"


def test_holdout_needs_two_examples_and_two_suffice():
    (split,) = make_splits(dataset(n=2), "holdout", seeds=(0,))
    assert sorted([*split.train, *split.test]) == [0, 1] and len(split.test) == 1
    with pytest.raises(BenchError) as err:
        make_splits(dataset(n=1), "holdout", seeds=(0,))
    assert str(err.value) == ("dataset 'd' has 1 example(s); a hold-out split needs at least 2 "
                              "(one to train on, one to test)")
