"""Classifier chains (CC) and their ensemble (ECC).

Paper: J. Read, B. Pfahringer, G. Holmes & E. Frank, "Classifier chains for multi-label
classification", Machine Learning 85(3): 333-359, 2011 (cited by RMLC as [6], the high-order
answer to binary relevance's independence). The paper's text is not in ``../shared/papers``; the
methods below follow its published description.

* CC (``cc``): L binary classifiers linked along a chain; classifier j is trained on the features
  augmented with the true labels 1..j-1 of the chain before it, and at prediction time it reads the
  *predicted* (0/1) labels of its predecessors. The chain order is the dataset's label order.
  scikit-learn's ``ClassifierChain`` implements exactly this (with ``cv=None``: true labels in
  training); its ``predict_proba`` gives classifier j's probability given the predicted
  predecessors, the score ``predict_scores`` returns.
* ECC (``ecc``): m = 10 chains, each with its own random label order and trained on a bootstrap
  sample of the training fold (sampling with replacement, as large as the fold: bagging). The
  paper combines the chains by voting: the score of label j is the fraction of chains that predict
  it (``voting="hard"``, the default), and the label set is the labels whose score reaches the
  threshold (0.5 here, ``Method.predict``). ``voting="soft"`` averages the chains' probabilities
  instead (a finer ranking for mAP; not the paper's rule).

The base learner is a logistic regression per label on standardised features (scikit-learn's
defaults, C = 1), the same learner as ``br``, so that ``cc``/``ecc`` against ``br`` isolates the
chain (the paper used SVMs; the issue that added these names logistic regression). A label that
is constant in a training fold (or in a bootstrap sample) gets a constant classifier (its
training frequency), as ``br``'s one-vs-rest does.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from typing import Literal

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multioutput import ClassifierChain
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions

from bench.api import Method, ablation_init
from bench.data import FEATURES, MultiLabelData


class LogisticOrConstant(ClassifierMixin, BaseEstimator):
    """A logistic regression, or the constant class when only one is present in what it is fitted
    on (a chain link over a label that a training fold or bootstrap sample never shows)."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000, random_state: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X, y):
        y = np.asarray(y)
        self.classes_ = np.array([0, 1])
        present = np.unique(y)
        if len(present) == 1:
            self.constant_ = int(present[0])
            return self
        self.constant_ = None
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            self.model_.fit(X, y)
        return self

    def predict_proba(self, X):
        if self.constant_ is not None:
            return np.tile(np.eye(2)[self.constant_], (len(X), 1))
        return self.model_.predict_proba(X)

    def predict(self, X):
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)


class ClassifierChains(Method):
    """ECC: an ensemble of ``n_chains`` bagged classifier chains with random label orders."""

    name = "ecc"
    accepts = frozenset({FEATURES})
    citation = "Read, Pfahringer, Holmes & Frank, Classifier chains for multi-label classification, Machine Learning 2011 (ECC)"
    _parameter_constraints = {
        "n_chains": [Interval(Integral, 1, None, closed="left")],
        "bagging": ["boolean"],
        "voting": [StrOptions({"hard", "soft"})],
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, n_chains: int = 10, bagging: bool = True, voting: Literal["hard", "soft"] = "hard",
                 C: float = 1.0, max_iter: int = 1000, random_state: int = 0):
        self.n_chains = n_chains
        self.bagging = bagging
        self.voting = voting
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _orders(self, n_labels: int, rng: np.random.Generator) -> list:
        return [rng.permutation(n_labels) for _ in range(self.n_chains)]

    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> ClassifierChains:
        self._validate_params()
        X, Y = train.concatenated_features(), np.asarray(train.Y, np.int64)
        self.scaler_ = StandardScaler().fit(X)
        X = self.scaler_.transform(X)
        rng = np.random.default_rng(self.random_state)
        self.chains_ = []
        for order in self._orders(Y.shape[1], rng):
            rows = rng.integers(0, len(X), len(X)) if self.bagging else np.arange(len(X))  # bootstrap
            base = LogisticOrConstant(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
            self.chains_.append(ClassifierChain(base, order=list(order)).fit(X[rows], Y[rows]))
        return self

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        X = self.scaler_.transform(data.concatenated_features())
        if self.voting == "soft":
            per_chain = [chain.predict_proba(X) for chain in self.chains_]
        else:  # the paper's vote: the fraction of chains predicting each label
            per_chain = [chain.predict(X) for chain in self.chains_]
        return np.mean(per_chain, axis=0).astype(np.float64)


class ClassifierChain1(ClassifierChains):
    """CC: one chain in the dataset's label order, trained on the whole training fold; its scores
    are the chain's probabilities. Registered as ECC's ablation (the paper's CC-against-ECC rows)."""

    name = "cc"
    citation = "Read, Pfahringer, Holmes & Frank, Classifier chains for multi-label classification, Machine Learning 2011 (CC)"
    ablation_of = "ecc"
    __init__ = ablation_init(ClassifierChains, {"n_chains": 1, "bagging": False, "voting": "soft"})

    def _orders(self, n_labels: int, rng: np.random.Generator) -> list:
        return [np.arange(n_labels)]
