"""Edge cases of bench.metrics that the first mutation-testing pass (mutmut) found unguarded.

Each test pins one behaviour against an independent expectation: a hand-computed value,
scikit-learn, or an ``argsort`` reference; none depends on the ranking loss's convention for
examples without relevant (or irrelevant) labels, which every example here has.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import coverage_error, label_ranking_average_precision_score, label_ranking_loss

from bench import metrics
from bench.errors import BenchError
from bench.metrics import direction_arrow, evaluate


def test_a_score_of_exactly_one_half_is_predicted():
    result = evaluate(np.array([[1, 0]]), np.array([[0.5, 0.49]]))
    assert result["hamming_loss"] == 0.0 and result["micro_f1"] == 1.0 and result["subset_accuracy"] == 1.0


@pytest.mark.parametrize("y_row, expected_coverage, expected_ranking_loss", [
    # sorted scores 0.9 | 0.5 0.5 | 0.1: the relevant label ties with the one ranked after it
    ([0, 1, 0, 0], 2, 2 / 3),
    # ties at the bottom of the ranking: the relevant label is tied with the last one
    ([0, 0, 1, 0], 2, 2 / 3),
])
def test_ties_anywhere_in_the_ranking_count_against_the_method(y_row, expected_coverage, expected_ranking_loss):
    y_true = np.array([y_row, [0, 0, 1, 1]])
    scores = np.array([[0.9, 0.5, 0.5, 0.1], [0.9, 0.6, 0.3, 0.3]])
    result = evaluate(y_true, scores)
    # second row: relevant {2, 3} tied at the bottom: coverage 3 (0-based), all 4 pairs mis-ordered
    assert result["coverage"] == pytest.approx((expected_coverage + 3) / 2)
    assert result["ranking_loss"] == pytest.approx((expected_ranking_loss + 1.0) / 2)
    # the same numbers from scikit-learn (1-based coverage)
    assert result["coverage"] == pytest.approx(coverage_error(y_true, scores) - 1)
    assert result["ranking_loss"] == pytest.approx(label_ranking_loss(y_true, scores))


def test_large_inputs_are_scored_in_chunks_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    y_true = (rng.random((301, 9)) < 0.3).astype(int)
    y_true[:, 0], y_true[:, 1] = 1, 0  # every example has a relevant and an irrelevant label
    scores = rng.integers(0, 5, size=y_true.shape) / 4.0  # ties
    whole = evaluate(y_true, scores)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 20)  # 2 rows per chunk, the last one short
    chunked = evaluate(y_true, scores)
    assert chunked == pytest.approx(whole, nan_ok=True)
    assert chunked["coverage"] == pytest.approx(coverage_error(y_true, scores) - 1)
    assert chunked["ranking_loss"] == pytest.approx(label_ranking_loss(y_true, scores))
    assert chunked["average_precision"] == pytest.approx(label_ranking_average_precision_score(y_true, scores))


def test_top3_takes_the_three_highest_scores_of_each_row():
    rng = np.random.default_rng(0)
    scores = 0.5 + rng.random((60, 8)) / 2  # all above the threshold: top-3 alone decides
    y_true = (rng.random((60, 8)) < 0.4).astype(int)
    top3 = np.zeros_like(y_true, dtype=bool)
    np.put_along_axis(top3, np.argsort(-scores, axis=1, kind="stable")[:, :3], True, axis=1)
    true_positives = (top3 & (y_true == 1)).sum()
    result = evaluate(y_true, scores)
    assert result["OP_top3"] == pytest.approx(true_positives / top3.sum())
    assert result["OR_top3"] == pytest.approx(true_positives / y_true.sum())


def test_class_f1_of_zero_precision_and_recall_is_zero():
    # every prediction wrong: CP = 0 (a class never predicted counts 0), CR = 0, so CF1 = OF1 = 0
    y_true = np.array([[1, 0], [1, 0]])
    result = evaluate(y_true, np.array([[0.1, 0.9], [0.2, 0.8]]))
    assert (result["CP"], result["CR"], result["CF1"]) == (0.0, 0.0, 0.0)
    assert (result["OP"], result["OR"], result["OF1"]) == (0.0, 0.0, 0.0)


def test_metrics_undefined_everywhere_are_nan_without_a_numpy_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(np.zeros((2, 3), dtype=int), np.full((2, 3), 0.2))
    assert np.isnan(result["mAP"]) and np.isnan(result["macro_f1"]) and np.isnan(result["CR"])


def test_a_ragged_input_names_the_array_and_numpys_reason_in_one_line():
    with pytest.raises(BenchError, match=r"^y_true must be a numeric array \[n_examples, n_labels\]: \S") as err:
        evaluate([[1, 0], [1]], np.zeros((2, 2)))
    assert "inhomogeneous" in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_metric_lists_the_known_ones():
    with pytest.raises(BenchError, match=r"unknown metric 'auc'; known metrics: hamming_loss, ranking_loss, "):
        direction_arrow("auc")


def test_lower_is_better_exactly_for_the_four_losses():
    # the papers' ↓ columns: Hamming loss, ranking loss, one-error, coverage; every other metric ↑
    assert {m for m in metrics.METRICS if direction_arrow(m) == "↓"} == {
        "hamming_loss", "ranking_loss", "one_error", "coverage"}
    assert metrics.LOWER_IS_BETTER == {"hamming_loss", "ranking_loss", "one_error", "coverage"}


def test_an_example_with_a_single_label_pair_counts_that_pair():
    # Two labels, one relevant: one (relevant, irrelevant) pair per example, mis-ordered in the first.
    y = np.array([[1, 0], [0, 1]])
    scores = np.array([[0.2, 0.8], [0.3, 0.6]])
    assert evaluate(y, scores)["ranking_loss"] == pytest.approx(label_ranking_loss(y, scores)) == 0.5
