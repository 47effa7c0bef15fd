"""Evaluation protocols: how a dataset is cut into train/test splits.

* ``kfold``: k-fold multi-label *iteratively stratified* cross-validation (Sechidis, Tsoumakas &
  Vlahavas, ECML-PKDD 2011), through the maintained ``iterative-stratification`` package
  (:class:`iterstrat.ml_stratifiers.MultilabelStratifiedKFold`), shuffled with the seed. This is the
  RMLC paper's protocol (10 folds) and the default for the multi-modal and MULAN sets.
* ``official``: the dataset's own train/test split (VOC, COCO, NUS-WIDE). The split is fixed, so
  repetitions over seeds vary only the model's randomness (initialisation, batch order).
* ``holdout``: a *random* 80/20 split drawn anew for each seed, the RETDM paper's protocol for
  scene and MIRFLICKR ("randomly select 80% for training"), via scikit-learn's ``ShuffleSplit``.

Inside a job, :func:`validation_split` carves a stratified validation part out of the training part
(early stopping, thresholds, in-fold searches); the test part is never cut.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import ShuffleSplit

from bench.data import PROTOCOLS, MultiLabelData
from bench.errors import BenchError

DEFAULT_SEEDS = {"kfold": (0,), "official": (0, 1, 2), "holdout": (0, 1, 2, 3, 4)}
HOLDOUT_TEST_FRACTION = 0.2
#: The fewest training examples a validation part is carved out of (:func:`validation_split`); a run
#: whose training parts hold fewer is refused before any job (:func:`bench.jobs.build_jobs`).
MIN_CARVE_OUT_EXAMPLES = 4


@dataclass(frozen=True, eq=False)
class Split:
    """One train/test partition: fold ``fold`` of repetition ``seed`` of ``protocol``."""

    protocol: str
    seed: int
    fold: int
    n_folds: int
    train: np.ndarray
    test: np.ndarray

    @property
    def hash(self) -> str:
        """A short digest of the indices: two jobs share it only if they saw the same split."""
        h = hashlib.sha256()
        for part in (self.train, self.test):
            h.update(np.sort(part).astype(np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]


def make_splits(
    data: MultiLabelData,
    protocol: str | None = None,
    n_folds: int = 10,
    seeds: tuple[int, ...] | None = None,
) -> list[Split]:
    """All splits of ``protocol`` (default: the dataset's own) over ``seeds``."""
    protocol = protocol or data.protocol
    if protocol not in PROTOCOLS:
        raise BenchError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    seeds = tuple(DEFAULT_SEEDS[protocol] if seeds is None else seeds)
    if protocol == "kfold":
        return [s for seed in seeds for s in _kfold(data, n_folds, seed)]
    if protocol == "official":
        return [_official(data, seed) for seed in seeds]
    return [_holdout(data, seed) for seed in seeds]


def _kfold(data: MultiLabelData, n_folds: int, seed: int) -> list[Split]:
    if not 2 <= n_folds <= data.n_samples:
        raise BenchError(f"--folds must be between 2 and the {data.n_samples} examples, got {n_folds}")
    cv = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [
        Split("kfold", seed, fold, n_folds, train, test)
        for fold, (train, test) in enumerate(cv.split(np.zeros((data.n_samples, 1)), data.Y))
    ]


def _official(data: MultiLabelData, seed: int) -> Split:
    if not {"train", "test"} <= set(data.splits):
        raise BenchError(
            f"dataset {data.name!r} has no official train/test split; use --protocol kfold or holdout"
        )
    train, test = np.asarray(data.splits["train"]), np.asarray(data.splits["test"])
    if not train.size or not test.size:
        raise BenchError(f"dataset {data.name!r}: its official {'train' if not train.size else 'test'} split "
                         "is empty; use --protocol kfold or holdout")
    return Split("official", seed, 0, 1, train, test)


def _holdout(data: MultiLabelData, seed: int) -> Split:
    if data.n_samples < 2:
        raise BenchError(f"dataset {data.name!r} has {data.n_samples} example(s); a hold-out split needs at "
                         "least 2 (one to train on, one to test)")
    cv = ShuffleSplit(n_splits=1, test_size=HOLDOUT_TEST_FRACTION, random_state=seed)
    train, test = next(cv.split(np.zeros((data.n_samples, 1))))
    return Split("holdout", seed, 0, 1, train, test)


def validation_split(train: MultiLabelData, fraction: float, seed: int) -> tuple[MultiLabelData, MultiLabelData]:
    """Carve a stratified validation part out of the *training fold only* (never the test fold).

    Used for early stopping and threshold selection; the fraction and seed are the method's own
    hyper-parameters, so the carve-out is part of the job's identity.
    """
    if not 0 < fraction < 1:
        raise BenchError(f"validation fraction must be in (0, 1), got {fraction}")
    if train.n_samples < MIN_CARVE_OUT_EXAMPLES:
        raise BenchError(f"dataset {train.name!r}: {train.n_samples} training examples are too few to split off a validation part")
    cv = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    fit_idx, val_idx = next(cv.split(np.zeros((train.n_samples, 1)), train.Y))
    return train.subset(fit_idx), train.subset(val_idx)
