"""The classic baselines (ML-kNN, CC, ECC) against readable references and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from bench import plugins
from bench.data import MultiLabelData

MLkNN = plugins.get("methods", "mlknn")
ECC = plugins.get("methods", "ecc")
CC = plugins.get("methods", "cc")


def data(X, Y) -> MultiLabelData:
    return MultiLabelData("toy", {"x": np.asarray(X, np.float32)}, np.asarray(Y, np.uint8),
                          tuple(f"l{j}" for j in range(np.shape(Y)[1])))


def toy(n=30, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).astype(np.float32).astype(np.float64)  # as MultiLabelData stores it
    Y = np.c_[X[:, 0] > 0, X[:, 0] + X[:, 1] > 0.3, X[:, 2] > 0.8].astype(np.uint8)
    return X, Y


# ----------------------------------------------------------------------------- ML-kNN
def reference_mlknn(X, Y, Xt, k, s):
    """ML-kNN as the paper's pseudo-code reads, one example and one label at a time (brute-force
    Euclidean neighbours, the example itself excluded in training)."""
    m, n_labels = Y.shape

    def neighbours(x, exclude=None):
        d = [(float(np.sum((x - X[i]) ** 2)), i) for i in range(m) if i != exclude]
        return [i for _, i in sorted(d)[:k]]

    prior = [(s + sum(Y[i][lab] for i in range(m))) / (2 * s + m) for lab in range(n_labels)]
    c = [[0] * (k + 1) for _ in range(n_labels)]
    c_not = [[0] * (k + 1) for _ in range(n_labels)]
    for i in range(m):
        near = neighbours(X[i], exclude=i)
        for lab in range(n_labels):
            delta = sum(Y[a][lab] for a in near)
            if Y[i][lab] == 1:
                c[lab][delta] += 1
            else:
                c_not[lab][delta] += 1
    scores = np.zeros((len(Xt), n_labels))
    for t, x in enumerate(Xt):
        near = neighbours(x)
        for lab in range(n_labels):
            j = sum(Y[a][lab] for a in near)
            p1 = prior[lab] * (s + c[lab][j]) / (s * (k + 1) + sum(c[lab]))
            p0 = (1 - prior[lab]) * (s + c_not[lab][j]) / (s * (k + 1) + sum(c_not[lab]))
            scores[t, lab] = p1 / (p1 + p0)
    return prior, c, c_not, scores


@pytest.mark.parametrize("k, s", [(10, 1.0), (3, 0.5)])
def test_mlknn_counts_posteriors_and_scores_equal_a_per_example_loop(k, s):
    X, Y = toy(40)
    Xt, _ = toy(12, seed=1)
    model = MLkNN(k=k, s=s).fit(data(X, Y))
    prior, c, c_not, scores = reference_mlknn(X, Y, Xt, k, s)
    np.testing.assert_allclose(model.prior_, prior)
    c, c_not = np.array(c), np.array(c_not)
    np.testing.assert_allclose(model.likelihood_, (s + c) / (s * (k + 1) + c.sum(1, keepdims=True)))
    np.testing.assert_allclose(model.likelihood_not_, (s + c_not) / (s * (k + 1) + c_not.sum(1, keepdims=True)))
    np.testing.assert_allclose(model.predict_scores(data(Xt, np.zeros((12, 3)))), scores, rtol=1e-12)


def test_mlknn_scores_on_a_hand_computed_case():
    # Five points on a line, one label, k = 1, s = 1. Labels 1 1 0 0 1 at x = 0 1 2.2 3 10.
    # Nearest other point: 0->1, 1->0, 2.2->3, 3->2.2, 10->3. Counts C: 1, 1, 0, 0, 0.
    # Positives (x = 0, 1, 10) have C = 1, 1, 0 -> c = [1, 2]; negatives (2.2, 3) C = 0, 0 -> c' = [2, 0].
    # P(H1) = (1 + 3) / (2 + 5) = 4/7.  P(E_j|H1) = (1 + c[j]) / (2 + 3) = [2/5, 3/5];
    # P(E_j|H0) = (1 + c'[j]) / (2 + 2) = [3/4, 1/4].
    # x = 0.2: neighbour x = 0 (label 1), j = 1: r = (4/7 3/5) / (4/7 3/5 + 3/7 1/4) = 48/63 = 16/21.
    # x = 2.9: neighbour x = 3 (label 0), j = 0: r = (4/7 2/5) / (4/7 2/5 + 3/7 3/4) = 32/77.
    X = np.array([[0.0], [1.0], [2.2], [3.0], [10.0]])
    Y = np.array([[1], [1], [0], [0], [1]])
    model = MLkNN(k=1, s=1.0).fit(data(X, Y))
    test = data([[0.2], [2.9]], [[0], [0]])
    np.testing.assert_allclose(model.predict_scores(test)[:, 0], [16 / 21, 32 / 77], rtol=1e-12)
    assert model.predict(test).tolist() == [[1], [0]]  # the MAP rule


def test_mlknn_on_yeast_lands_where_the_paper_reports():
    # Published ML-kNN results on yeast (10-fold CV): Hamming loss ~0.19-0.20, ranking loss
    # ~0.16-0.17, one-error ~0.23. One held-out part of 400 examples here, so the bounds are wider.
    from sklearn.metrics import hamming_loss, label_ranking_loss

    yeast = plugins.get("datasets", "yeast")().load(None)
    rng = np.random.default_rng(0)
    order = rng.permutation(yeast.n_samples)
    test, train = order[:400], order[400:]
    model = MLkNN().fit(yeast.subset(train))
    scores = model.predict_scores(yeast.subset(test))
    Y = yeast.Y[test]
    assert 0.17 < hamming_loss(Y, (scores >= 0.5).astype(np.uint8)) < 0.22
    assert 0.14 < label_ranking_loss(Y, scores) < 0.19
    one_error = np.mean(Y[np.arange(len(Y)), scores.argmax(axis=1)] == 0)  # top label not relevant
    assert 0.19 < one_error < 0.27


# ----------------------------------------------------------------------------- classifier chains
def reference_chain(X, Y, Xt, order):
    """A classifier chain written out: link j learns label order[j] from the features and the
    TRUE labels of the links before it, and predicts from the PREDICTED labels before it."""
    scaler = StandardScaler().fit(X)
    X, Xt = scaler.transform(X), scaler.transform(Xt)
    probs, preds = np.zeros((len(Xt), Y.shape[1])), np.zeros((len(Xt), Y.shape[1]))
    for j, label in enumerate(order):
        before = list(order[:j])
        clf = LogisticRegression(max_iter=1000, random_state=0).fit(np.c_[X, Y[:, before]], Y[:, label])
        inputs = np.c_[Xt, preds[:, before]]
        probs[:, label] = clf.predict_proba(inputs)[:, 1]
        preds[:, label] = clf.predict(inputs)
    return probs, preds


def test_cc_is_the_chain_in_label_order_reading_predicted_predecessors():
    X, Y = toy(60)
    Y[:, 2] = Y[:, 0] ^ Y[:, 1]  # a label the chain can read off its predecessors
    Xt, _ = toy(20, seed=3)
    probs, _ = reference_chain(X, Y, Xt, [0, 1, 2])
    got = CC().fit(data(X, Y)).predict_scores(data(Xt, np.zeros((20, 3))))
    np.testing.assert_allclose(got, probs, atol=1e-6)  # float32 features


def test_ecc_votes_are_the_fraction_of_chains_predicting_each_label():
    X, Y = toy(60)
    Xt, _ = toy(20, seed=3)
    model = ECC(n_chains=4, bagging=False, random_state=5).fit(data(X, Y))
    orders = [chain.order_ for chain in model.chains_]
    assert any(list(o) != list(orders[0]) for o in orders)  # random orders
    votes = np.mean([reference_chain(X, Y, Xt, list(o))[1] for o in orders], axis=0)
    np.testing.assert_allclose(model.predict_scores(data(Xt, np.zeros((20, 3)))), votes)
    soft = ECC(n_chains=4, bagging=False, voting="soft", random_state=5).fit(data(X, Y))
    probs = np.mean([reference_chain(X, Y, Xt, list(o))[0] for o in orders], axis=0)
    np.testing.assert_allclose(soft.predict_scores(data(Xt, np.zeros((20, 3)))), probs, atol=1e-6)  # float32 features


def test_ecc_bags_each_chain_on_its_own_bootstrap_sample():
    X, Y = toy(60)
    Y[:5, 2] = 1  # a rare label: some bootstrap samples miss every positive (a constant link)
    Y[5:, 2] = 0
    model = ECC(n_chains=10, random_state=0).fit(data(X, Y))
    coefs = [chain.estimators_[0] for chain in model.chains_]
    assert len({tuple(np.round(e.model_.coef_.ravel(), 8)) for e in coefs if e.constant_ is None}) > 1
    unbagged = ECC(n_chains=2, bagging=False, random_state=0).fit(data(X, Y))
    bagged = ECC(n_chains=2, bagging=True, random_state=0).fit(data(X, Y))
    assert [list(c.order_) for c in unbagged.chains_] == [list(c.order_) for c in bagged.chains_]
    assert not np.allclose(unbagged.chains_[0].estimators_[0].model_.coef_,
                           bagged.chains_[0].estimators_[0].model_.coef_)
