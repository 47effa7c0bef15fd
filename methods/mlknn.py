"""ML-kNN: a lazy multi-label learner, the maximum-a-posteriori rule over neighbour counts.

Paper: M.-L. Zhang & Z.-H. Zhou, "ML-KNN: A lazy learning approach to multi-label learning",
Pattern Recognition 40(7): 2038-2048, 2007 (cited by RETDM as [20]). The paper's text is not in
``../shared/papers``; the algorithm below is its Fig. 1 (pseudo-code), written from the published
description, names as there (m training examples, label l, k neighbours, smoothing s).

Training (Fig. 1, steps 1-13):

* Eq. (prior): P(H_1^l) = (s + Σ_i y_i(l)) / (2s + m), P(H_0^l) = 1 - P(H_1^l).
* For every training example x_i, its k nearest neighbours N(x_i) among the *other* training
  examples, and the membership counting vector C_{x_i}(l) = Σ_{a ∈ N(x_i)} y_a(l) ∈ {0..k}.
* c[j], c'[j] (per label): how many training examples with (c) or without (c') label l have
  exactly j neighbours with label l.
* Eq. (likelihood): P(E_j^l | H_1^l) = (s + c[j]) / (s(k + 1) + Σ_p c[p]), and P(E_j^l | H_0^l)
  likewise with c'.

Prediction (steps 14-18), for a test example t with counting vector C_t(l) from its k nearest
training examples:

* y_t(l) = argmax_b P(H_b^l) P(E_{C_t(l)}^l | H_b^l) (the MAP rule), and the real-valued
  r_t(l) = P(H_1^l | E_{C_t(l)}^l) = P(H_1) P(E|H_1) / Σ_b P(H_b) P(E|H_b) (Bayes' rule), the
  ranking score. ``predict_scores`` returns r_t; the MAP rule is r_t(l) >= 0.5 (``Method.predict``;
  an exact tie P(H_1)P(E|H_1) = P(H_0)P(E|H_0), which the argmax leaves open, counts as relevant).

Paper defaults: k = 10, s = 1, Euclidean distance on the features as given (all feature views
concatenated here, as ``br`` reads them). ``standardize`` (off by default, as in the paper)
standardises each feature on the training fold first. Neighbours come from scikit-learn's
``NearestNeighbors``; a training example is never its own neighbour (``kneighbors()`` without
query points), and among equidistant candidates the search's own order decides, as any
implementation's does.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval

from bench.api import Method
from bench.data import FEATURES, MultiLabelData


def membership_counts(neighbours: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """C[i, l]: how many of example i's neighbours (rows of indices into ``Y``) have label l."""
    return Y[neighbours].sum(axis=1, dtype=np.int64)


def count_tables(C: np.ndarray, Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(c, c'), each [L, k + 1]: c[l, j] training examples with label l whose count C[i, l] is j,
    c'[l, j] those without label l."""
    n_labels = Y.shape[1]
    c, c_not = np.zeros((n_labels, k + 1), np.int64), np.zeros((n_labels, k + 1), np.int64)
    labels = np.broadcast_to(np.arange(n_labels), C.shape)
    np.add.at(c, (labels[Y == 1], C[Y == 1]), 1)
    np.add.at(c_not, (labels[Y == 0], C[Y == 0]), 1)
    return c, c_not


class MLkNN(Method):
    name = "mlknn"
    accepts = frozenset({FEATURES})
    citation = "Zhang & Zhou, ML-KNN: a lazy learning approach to multi-label learning, Pattern Recognition 2007"
    # scikit-learn's checks, run by `bench run` before any job (`--set k=0` is refused there).
    _parameter_constraints = {"k": [Interval(Integral, 1, None, closed="left")],
                              "s": [Interval(Real, 0, None, closed="neither")], "standardize": ["boolean"]}

    def __init__(self, k: int = 10, s: float = 1.0, standardize: bool = False):
        self.k = k
        self.s = s
        self.standardize = standardize

    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> MLkNN:
        self._validate_params()
        X, Y = self._features(train, fit=True), np.asarray(train.Y, np.int64)
        m = len(X)
        if m <= self.k:
            raise ValueError(f"ML-kNN needs more than k={self.k} training examples, got {m}")
        self.search_ = NearestNeighbors(n_neighbors=self.k).fit(X)
        self.Y_ = Y
        s, k = float(self.s), self.k
        self.prior_ = (s + Y.sum(axis=0)) / (2 * s + m)  # Eq. (prior): P(H_1^l)
        C = membership_counts(self.search_.kneighbors(return_distance=False), Y)  # self excluded
        c, c_not = count_tables(C, Y, k)
        self.likelihood_ = (s + c) / (s * (k + 1) + c.sum(axis=1, keepdims=True))  # P(E_j | H_1)
        self.likelihood_not_ = (s + c_not) / (s * (k + 1) + c_not.sum(axis=1, keepdims=True))  # P(E_j | H_0)
        return self

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        """r_t(l) = P(H_1^l | E^l_{C_t(l)}): the posterior of each label given its neighbour count."""
        neighbours = self.search_.kneighbors(self._features(data), return_distance=False)
        C = membership_counts(neighbours, self.Y_)
        labels = np.arange(C.shape[1])
        relevant = self.prior_ * self.likelihood_[labels, C]
        irrelevant = (1 - self.prior_) * self.likelihood_not_[labels, C]
        return (relevant / (relevant + irrelevant)).astype(np.float64)

    def _features(self, data: MultiLabelData, fit: bool = False) -> np.ndarray:
        X = data.concatenated_features().astype(np.float64)
        if not self.standardize:
            return X
        if fit:
            self.scaler_ = StandardScaler().fit(X)
        return self.scaler_.transform(X)
