"""Binary relevance (BR): one independent logistic regression per label.

The reference row of every table. BR ignores label correlations by construction, so it is the
natural yardstick for the five methods, all of which claim to exploit them. References:
Boutell, Luo, Shen & Brown, "Learning multi-label scene classification", Pattern Recognition
37(9), 2004; Zhang & Zhou, "A review on multi-label learning algorithms", IEEE TKDE 26(8), 2014.

Input: all feature views concatenated (after per-feature standardisation fitted on the training
fold only). A label with no positive example in a training fold gets scikit-learn's constant
predictor (score 0 for every test example), which is what BR can honestly say about it.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.api import Method
from bench.data import FEATURES, MultiLabelData


class BinaryRelevance(Method):
    name = "br"
    accepts = frozenset({FEATURES})
    citation = "Boutell et al., Pattern Recognition 2004 (binary relevance); logistic regression per label"
    # scikit-learn's own checks of its arguments, so that `bench run --set C=-1` is refused before any job.
    _parameter_constraints = {
        "C": LogisticRegression._parameter_constraints["C"],
        "max_iter": LogisticRegression._parameter_constraints["max_iter"],
        "standardize": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(self, C: float = 1.0, max_iter: int = 1000, standardize: bool = True, random_state: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> BinaryRelevance:
        steps = [StandardScaler()] if self.standardize else []
        clf = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)
        self.model_ = make_pipeline(*steps, OneVsRestClassifier(clf))
        with warnings.catch_warnings():
            # "Label k is present in all/no training examples": the documented constant predictor.
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            self.model_.fit(train.concatenated_features(), train.Y)
        return self

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        return self.model_.predict_proba(data.concatenated_features()).astype(np.float64)
