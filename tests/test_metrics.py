"""Tests of bench.metrics against independent references.

* Metrics scikit-learn has are compared with scikit-learn on random inputs (float scores and
  integer-valued scores that force ties, rows with no labels, labels with no positives, an
  all-positive row, n = 1); where our convention differs, the conversion is written out.
* The ML-GCN family (CP ... OF1, their top-3 forms, and ML-GCN's AP loop) is compared with a
  literal numpy port of ML-GCN's loops (megvii-research/ML-GCN, util.py) below.
* Small hand-computed cases pin one-error, the ranking metrics with ties, the ML-GCN family, the
  top-3 tie rule, ``ignore`` and the ``undefined`` counts.
"""

import math
import pickle
import warnings

import numpy as np
import pytest
from scipy.special import logit
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    coverage_error,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    label_ranking_loss,
)

from bench.errors import BenchError
from bench.metrics import LOWER_IS_BETTER, METRICS, Metric, MetricResult, direction_arrow, evaluate

EXPECTED_KEYS = [
    "hamming_loss", "ranking_loss", "one_error", "coverage", "average_precision", "subset_accuracy",
    "example_f1", "macro_f1", "micro_f1", "CP", "CR", "CF1", "OP", "OR", "OF1",
    "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3", "mAP",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Random inputs


def make_case(seed, n=80, n_labels=7, integer_scores=False, empty_label=True, full_row=True):
    """Random labels and scores with the awkward cases built in.

    Row 0 has no label; with ``full_row`` row 1 has every label; with ``empty_label`` the last
    label has no positive (and, not to clash, row 1 then misses only that label).
    """
    rng = np.random.default_rng(seed)
    y_true = (rng.random((n, n_labels)) < 0.3).astype(int)
    if n > 1:
        y_true[1] = 1 if full_row else y_true[1]
    y_true[0] = 0
    if empty_label:
        y_true[:, -1] = 0
    if integer_scores:
        scores = rng.integers(0, 4, size=(n, n_labels)) / 3.0  # 4 distinct values: many ties
    else:
        scores = rng.random((n, n_labels))
    return y_true, scores


CASES = {
    "floats-a": make_case(0),
    "floats-b": make_case(1, n=150, n_labels=12, empty_label=False),
    "floats-c": make_case(2, n=40, n_labels=3, full_row=False),
    "ints-a": make_case(3, integer_scores=True),
    "ints-b": make_case(4, n=120, n_labels=10, integer_scores=True, empty_label=False),
    "ints-c": make_case(5, n=50, n_labels=2, integer_scores=True),
    "n=1": (np.array([[1, 0, 1, 0, 0]]), np.array([[0.7, 0.2, 0.4, 0.9, 0.4]])),
    "n=1-all-positive": (np.array([[1, 1, 1]]), np.array([[0.6, 0.1, 0.6]])),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request):
    y_true, scores = CASES[request.param]
    return y_true, scores, evaluate(y_true, scores)


def rows_with_labels(y_true):
    return y_true.sum(axis=1) > 0


# --------------------------------------------------------------------------------------------
# Result structure and registry


def test_keys_are_exactly_the_documented_list_in_order(case):
    _, _, result = case
    assert isinstance(result, MetricResult) and isinstance(result, dict)
    assert list(result) == EXPECTED_KEYS
    assert list(METRICS) == EXPECTED_KEYS
    assert all(type(value) is float for value in result.values())


def test_registry_directions_and_arrows():
    assert LOWER_IS_BETTER == {"hamming_loss", "ranking_loss", "one_error", "coverage"}
    assert all(
        isinstance(m, Metric) and m.name == name and m.label and m.description for name, m in METRICS.items()
    )
    assert [METRICS[name].higher_is_better for name in EXPECTED_KEYS] == [False] * 4 + [True] * 18
    assert direction_arrow("coverage") == "↓"
    assert direction_arrow("mAP") == "↑"
    with pytest.raises(BenchError, match="unknown metric 'accuracy'"):
        direction_arrow("accuracy")
    with pytest.raises(AttributeError):  # frozen
        METRICS["mAP"].higher_is_better = False


def test_undefined_has_every_skipping_metric():
    result = evaluate(*CASES["floats-b"])
    assert set(result.undefined) == {
        "one_error",
        "average_precision",
        "macro_f1",
        "CR",
        "CR_top3",
        "mAP",
    }
    assert all(type(count) is int for count in result.undefined.values())


def test_result_survives_pickle():
    result = evaluate(*CASES["floats-a"])
    copy = pickle.loads(pickle.dumps(result))
    assert copy == result
    assert copy.undefined == result.undefined
    np.testing.assert_array_equal(copy.per_label_ap, result.per_label_ap)


# --------------------------------------------------------------------------------------------
# Against scikit-learn


def test_hamming_loss_and_subset_accuracy_match_sklearn(case):
    y_true, scores, result = case
    y_pred = (scores >= 0.5).astype(int)
    assert result["hamming_loss"] == pytest.approx(hamming_loss(y_true, y_pred))
    assert result["subset_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))


def test_ranking_loss_is_sklearn_rows_without_a_pair_scoring_zero(case):
    y_true, scores, result = case
    # sklearn (like MULAN's loss-based RankingLoss and Clus) scores a row without a (relevant,
    # irrelevant) pair 0 and keeps it in the mean: nothing is left out.
    assert result["ranking_loss"] == pytest.approx(label_ranking_loss(y_true, scores), abs=1e-12)
    assert "ranking_loss" not in result.undefined


def test_ranking_loss_on_unlabelled_and_all_labelled_rows_is_sklearn():
    """MIRFLICKR-like data: many examples with no label, some with every label."""
    rng = np.random.default_rng(3)
    y_true = (rng.random((200, 6)) < 0.3).astype(int)
    y_true[:60] = 0
    y_true[60:70] = 1
    scores = rng.random((200, 6))
    result = evaluate(y_true, scores)
    assert result["ranking_loss"] == pytest.approx(label_ranking_loss(y_true, scores), abs=1e-12)
    n_pairless = 70 + int(np.sum(np.isin(y_true[70:].sum(axis=1), (0, 6))))
    assert n_pairless >= 70  # the case the convention is about


def test_coverage_is_mulan_zero_based_with_empty_rows_as_zero(case):
    y_true, scores, result = case
    n = len(y_true)
    has_labels = rows_with_labels(y_true)
    # mean over rows of (sklearn_row - 1) for rows with labels and 0 for the others.
    sklearn_mean_on_labelled = coverage_error(y_true[has_labels], scores[has_labels])
    expected = (sklearn_mean_on_labelled - 1) * has_labels.sum() / n
    assert result["coverage"] == pytest.approx(expected)


def test_average_precision_is_sklearn_lrap_without_the_empty_rows(case):
    y_true, scores, result = case
    n = len(y_true)
    n_empty = int(np.sum(~rows_with_labels(y_true)))
    assert result.undefined["average_precision"] == n_empty
    # sklearn scores a row without labels 1 and keeps it in the mean.
    sklearn_value = label_ranking_average_precision_score(y_true, scores)
    assert result["average_precision"] == pytest.approx((sklearn_value * n - n_empty) / (n - n_empty))


def test_f1_scores_match_sklearn(case):
    y_true, scores, result = case
    y_pred = (scores >= 0.5).astype(int)
    assert result["example_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="samples", zero_division=1.0)
    )
    assert result["micro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="micro"))
    # zero_division=nan: sklearn leaves undefined labels out of the macro average, as we do.
    assert result["macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro", zero_division=np.nan)
    )
    never_seen = (y_true.sum(axis=0) == 0) & (y_pred.sum(axis=0) == 0)
    assert result.undefined["macro_f1"] == int(never_seen.sum())


def test_per_label_ap_and_map_match_sklearn(case):
    y_true, scores, result = case
    has_positive = y_true.sum(axis=0) > 0
    # NaN exactly where a label has no positive.
    np.testing.assert_array_equal(np.isnan(result.per_label_ap), ~has_positive)
    expected = [average_precision_score(y_true[:, j], scores[:, j]) for j in np.flatnonzero(has_positive)]
    np.testing.assert_allclose(result.per_label_ap[has_positive], expected)
    assert result["mAP"] == pytest.approx(np.mean(expected))
    assert result.undefined["mAP"] == int(np.sum(~has_positive))


def test_ignore_removes_entries_from_ap_like_deleting_them():
    y_true, scores = CASES["ints-b"]
    ignore = np.random.default_rng(9).random(y_true.shape) < 0.2
    result = evaluate(y_true, scores, ignore=ignore)
    for j in range(y_true.shape[1]):
        kept = ~ignore[:, j]
        expected = average_precision_score(y_true[kept, j], scores[kept, j])
        assert result.per_label_ap[j] == pytest.approx(expected)
    # ignore touches the AP family, and the ML-GCN family (as negatives: next test), nothing else.
    plain = evaluate(y_true, scores)
    untouched = [k for k in result if k != "mAP" and not k.startswith(("CP", "CR", "CF1", "OP", "OR", "OF1"))]
    assert {k: result[k] for k in untouched} == {k: plain[k] for k in untouched}
    as_negatives = evaluate(y_true & ~ignore, scores)
    assert {k: v for k, v in result.items() if k not in untouched and k != "mAP"} == {
        k: v for k, v in as_negatives.items() if k not in untouched and k != "mAP"}


# --------------------------------------------------------------------------------------------
# Against a literal port of ML-GCN's loops (megvii-research/ML-GCN, util.py)


def mlgcn_evaluation(scores_, targets_):
    """AveragePrecisionMeter.evaluation, line by line (``scores >= 0`` means predicted)."""
    n, n_class = scores_.shape
    Nc, Np, Ng = np.zeros(n_class), np.zeros(n_class), np.zeros(n_class)
    for k in range(n_class):
        scores = scores_[:, k]
        targets = targets_[:, k].copy()
        targets[targets == -1] = 0
        Ng[k] = np.sum(targets == 1)
        Np[k] = np.sum(scores >= 0)
        Nc[k] = np.sum(targets * (scores >= 0))
    Np[Np == 0] = 1
    OP = np.sum(Nc) / np.sum(Np)
    OR = np.sum(Nc) / np.sum(Ng)
    OF1 = (2 * OP * OR) / (OP + OR)
    CP = np.sum(Nc / Np) / n_class
    CR = np.sum(Nc / Ng) / n_class
    CF1 = (2 * CP * CR) / (CP + CR)
    return {"OP": OP, "OR": OR, "OF1": OF1, "CP": CP, "CR": CR, "CF1": CF1}


def mlgcn_overall_topk(logits, targets, k):
    """AveragePrecisionMeter.overall_topk; torch.topk's order among ties is unspecified, so the
    top k come from Python's stable sort on descending score (lowest label index first)."""
    n, c = logits.shape
    scores = np.zeros((n, c)) - 1
    index = [sorted(range(c), key=lambda j: -logits[i, j])[:k] for i in range(n)]
    for i in range(n):
        for ind in index[i]:
            scores[i, ind] = 1 if logits[i, ind] >= 0 else -1
    return mlgcn_evaluation(scores, targets)


def mlgcn_average_precision(output, target, difficult_examples=True):
    """AveragePrecisionMeter.average_precision: target 1 positive, -1 negative, 0 difficult."""
    indices = np.argsort(-output, kind="stable")
    pos_count = 0.0
    total_count = 0.0
    precision_at_i = 0.0
    for i in indices:
        label = target[i]
        if difficult_examples and label == 0:
            continue
        if label == 1:
            pos_count += 1
        total_count += 1
        if label == 1:
            precision_at_i += pos_count / total_count
    precision_at_i /= pos_count
    return precision_at_i


def assert_family_equal(result, expected, suffix=""):
    for name, value in expected.items():
        assert result[name + suffix] == pytest.approx(value), name + suffix


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_mlgcn_family_matches_the_port_on_probabilities(seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((200, 9)) < 0.3).astype(int)
    probabilities = rng.random((200, 9))
    result = evaluate(y_true, probabilities)
    # ML-GCN thresholds logits at 0; we threshold probabilities at 0.5, the same predictions.
    logits = logit(probabilities)
    assert_family_equal(result, mlgcn_evaluation(logits, y_true))
    assert_family_equal(result, mlgcn_overall_topk(logits, y_true, 3), "_top3")
    assert result.undefined["CR"] == result.undefined["CR_top3"] == 0


@pytest.mark.parametrize("name", ["ints-a", "ints-c", "floats-c"])
def test_mlgcn_family_with_ties_and_classes_without_positives(name):
    y_true, scores = CASES[name]
    y_pred = scores >= 0.6  # integer-valued scores: thresholds and the top 3 both cross ties
    result = evaluate(y_true, scores, y_pred=y_pred)
    logits = scores - 0.6  # same order and ties; >= 0 exactly where y_pred
    has_positive = y_true.sum(axis=0) > 0
    for suffix, port in [("", mlgcn_evaluation), ("_top3", lambda s, t: mlgcn_overall_topk(s, t, 3))]:
        with np.errstate(invalid="ignore"):  # ML-GCN's CR is 0/0 here: the case we define
            full = port(logits, y_true)
        # CR is ML-GCN's CR over the classes with a positive (elsewhere ML-GCN's Nc/Ng is 0/0) ...
        cr = port(logits[:, has_positive], y_true[:, has_positive])["CR"]
        assert result["CR" + suffix] == pytest.approx(cr)
        assert result.undefined["CR" + suffix] == int(np.sum(~has_positive))
        # ... the rest is ML-GCN's, CF1 being the harmonic mean of its CP and that CR.
        assert_family_equal(result, {k: full[k] for k in ("OP", "OR", "OF1", "CP")}, suffix)
        assert result["CF1" + suffix] == pytest.approx(2 * full["CP"] * cr / (full["CP"] + cr))


def test_top3_is_all_labels_when_fewer_than_three():
    y_true, scores = CASES["ints-c"]  # two labels
    result = evaluate(y_true, scores)
    for name in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert result[name + "_top3"] == result[name]


@pytest.mark.parametrize("seed", [20, 21])
def test_map_matches_mlgcn_loop_with_difficult_examples(seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((150, 6)) < 0.3).astype(int)
    scores = rng.random((150, 6))  # no ties: ML-GCN's loop is then tie-order independent
    difficult = (rng.random((150, 6)) < 0.15) & (y_true == 1)  # VOC marks difficult objects
    result = evaluate(y_true, scores, ignore=difficult)
    targets = np.where(difficult, 0, np.where(y_true == 1, 1, -1))  # VOC: 1, -1, 0 = difficult
    expected = [mlgcn_average_precision(scores[:, k], targets[:, k]) for k in range(6)]
    np.testing.assert_allclose(result.per_label_ap, expected)
    assert result["mAP"] == pytest.approx(np.mean(expected))


@pytest.mark.parametrize("seed", [22, 23])
def test_mlgcn_family_counts_difficult_labels_as_negatives_as_mlgcn_does(seed):
    """VOC's difficult labels: ML-GCN's overall()/overall_topk() see target 0 (then -1 -> 0), i.e.
    a negative; counting them as positives moved CP ... OF1 by up to 0.12 on a checked case."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random((150, 6)) < 0.3).astype(int)
    probabilities = rng.random((150, 6))
    difficult = (rng.random((150, 6)) < 0.3) & (y_true == 1)
    result = evaluate(y_true, probabilities, ignore=difficult)
    targets = np.where(difficult, 0, np.where(y_true == 1, 1, -1))
    logits = logit(probabilities)
    assert_family_equal(result, mlgcn_evaluation(logits, targets))
    assert_family_equal(result, mlgcn_overall_topk(logits, targets, 3), "_top3")
    assert evaluate(y_true, probabilities)["CR"] != pytest.approx(result["CR"])  # the convention matters here


def test_a_difficult_label_by_hand():
    """One label, four examples: positives 0 and 1 (1 difficult), predicted 1 and 2. ML-GCN: Ng = 1,
    Np = 2, Nc = 0 (the difficult one is a negative), so CP = OP = 0, CR = OR = 0; counted as a
    positive it would give Nc = 1, CP = 0.5, CR = 0.5."""
    y_true = np.array([[1], [1], [0], [0]])
    probabilities = np.array([[0.2], [0.9], [0.8], [0.1]])
    difficult = np.array([[False], [True], [False], [False]])
    result = evaluate(y_true, probabilities, ignore=difficult)
    assert (result["CP"], result["CR"], result["OP"], result["OR"]) == (0.0, 0.0, 0.0, 0.0)
    plain = evaluate(y_true, probabilities)
    assert (plain["CP"], plain["CR"]) == (0.5, 0.5)
    assert result["hamming_loss"] == plain["hamming_loss"] == 0.5  # other metrics take y_true as given
    assert result["mAP"] == pytest.approx(0.5)  # AP without example 1: positive 0 ranked behind 2


# --------------------------------------------------------------------------------------------
# Hand-computed cases

RANKING_Y = np.array([
    [1, 0, 1, 0],
    [0, 1, 0, 0],
    [0, 0, 0, 0],
    [1, 1, 1, 1],
])  # fmt: skip
RANKING_SCORES = np.array([
    [0.9, 0.8, 0.8, 0.1],
    [0.5, 0.5, 0.2, 0.7],
    [0.1, 0.2, 0.3, 0.4],
    [0.4, 0.3, 0.2, 0.1],
])  # fmt: skip


def test_ranking_metrics_by_hand_with_ties():
    result = evaluate(RANKING_Y, RANKING_SCORES)
    # ranking loss. row 0: pairs (0,1) (0,3) (2,1) (2,3); (2,1) ties 0.8 = 0.8 -> 1/4.
    # row 1: pairs (1,0) tie 0.5 = 0.5, (1,2) fine, (1,3) 0.5 < 0.7 -> 2/3.
    # row 2 (no relevant) and row 3 (no irrelevant) have no pair: 0 each, counted:
    # (1/4 + 2/3 + 0 + 0) / 4 = 11/48.
    assert result["ranking_loss"] == pytest.approx(11 / 48)
    assert "ranking_loss" not in result.undefined
    # one-error. row 0: top is label 0, relevant -> 0; row 1: top is label 3, irrelevant -> 1;
    # row 3: everything relevant -> 0; row 2 skipped: 1/3.
    assert result["one_error"] == pytest.approx(1 / 3)
    assert result.undefined["one_error"] == 1
    # coverage. row 0: lowest relevant 0.8, labels >= 0.8: {0,1,2} -> 3 - 1 = 2;
    # row 1: labels >= 0.5: {0,1,3} -> 2; row 2: no label -> 0; row 3: all 4 -> 3. (2+2+0+3)/4.
    assert result["coverage"] == pytest.approx(7 / 4)
    # average precision. row 0: label 0: 1/1, label 2: |{0,2}| / |{0,1,2}| = 2/3 -> 5/6;
    # row 1: label 1: 1/|{0,1,3}| = 1/3; row 3: 1; row 2 skipped: (5/6 + 1/3 + 1)/3 = 13/18.
    assert result["average_precision"] == pytest.approx(13 / 18)
    assert result.undefined["average_precision"] == 1


def test_one_error_matches_a_direct_reference(case):
    y_true, scores, result = case
    has_labels = rows_with_labels(y_true)
    # an error when any label sharing the row's top score is irrelevant (pessimistic ties).
    at_top = scores == scores.max(axis=1, keepdims=True)
    errors = np.any(at_top & (y_true == 0), axis=1)
    assert result["one_error"] == pytest.approx(errors[has_labels].mean())
    assert result.undefined["one_error"] == int(np.sum(~has_labels))


@pytest.mark.parametrize(
    ("y_row", "expected"),
    [
        ([1, 0, 0], 1.0),  # label 1 (irrelevant) shares the top score: pessimistic -> error
        ([0, 1, 0], 1.0),  # the same with the roles swapped
        ([1, 1, 0], 0.0),  # every label sharing the top score is relevant
        ([0, 0, 1], 1.0),
    ],
)
def test_one_error_breaks_ties_at_the_top_pessimistically(y_row, expected):
    result = evaluate(np.array([y_row]), np.array([[0.9, 0.9, 0.1]]))
    assert result["one_error"] == expected


# Four examples, five classes, predictions given directly (scores = predictions).
#   class 0: positives in rows 0,1,3; predicted in rows 0,2,3 -> Ng 3, Np 3, Nc 2
#   class 1: positives in rows 1,2; never predicted           -> Ng 2, Np 0 -> 1, Nc 0
#   class 2: no positive; predicted in row 1                  -> Ng 0, Np 1, Nc 0
#   class 3: positive in row 2; predicted in row 2            -> Ng 1, Np 1, Nc 1
#   class 4: no positive, never predicted                     -> Ng 0, Np 0 -> 1, Nc 0
FAMILY_Y = np.array([
    [1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0],
    [0, 1, 0, 1, 0],
    [1, 0, 0, 0, 0],
])  # fmt: skip
FAMILY_PRED = np.array([
    [1, 0, 0, 0, 0],
    [0, 0, 1, 0, 0],
    [1, 0, 0, 1, 0],
    [1, 0, 0, 0, 0],
])  # fmt: skip


def test_mlgcn_family_and_f1_by_hand():
    result = evaluate(FAMILY_Y, FAMILY_PRED.astype(float))
    # OP = ΣNc / ΣNp = 3 / (3+1+1+1+1) = 3/7 (ML-GCN's Np[Np == 0] = 1 enters the sum too).
    assert result["OP"] == pytest.approx(3 / 7)
    # OR = ΣNc / ΣNg = 3/6; OF1 = 2·(3/7)(1/2) / (3/7 + 1/2) = 6/13.
    assert result["OR"] == pytest.approx(1 / 2)
    assert result["OF1"] == pytest.approx(6 / 13)
    # CP = mean(2/3, 0, 0, 1, 0) = 1/3.
    assert result["CP"] == pytest.approx(1 / 3)
    # CR over classes 0, 1, 3 (2 and 4 have no positive): mean(2/3, 0, 1) = 5/9.
    assert result["CR"] == pytest.approx(5 / 9)
    assert result.undefined["CR"] == 2
    # CF1 = 2·(1/3)(5/9) / (1/3 + 5/9) = 5/12: the harmonic mean of CP and CR.
    assert result["CF1"] == pytest.approx(5 / 12)
    # per-label F1 = 2tp/(2tp+fp+fn): 4/6, 0/2, 0/1, 2/2, and class 4 undefined -> mean = 5/12.
    assert result["macro_f1"] == pytest.approx(5 / 12)
    assert result.undefined["macro_f1"] == 1
    # micro: 2·3 / (6 + 5) = 6/11.
    assert result["micro_f1"] == pytest.approx(6 / 11)
    # example F1 per row: 2/2, 0/3, 2/4, 2/2 -> 2.5/4.
    assert result["example_f1"] == pytest.approx(0.625)
    # 5 wrong entries out of 20 (labels 0, 1, 2 of row 1; labels 0, 1 of row 2); rows 0, 3 exact.
    assert result["hamming_loss"] == pytest.approx(5 / 20)
    assert result["subset_accuracy"] == pytest.approx(0.5)


def test_top3_by_hand_with_ties_for_third_place():
    y_true = np.array([[0, 0, 1, 1, 0], [0, 0, 0, 1, 1]])
    scores = np.array([[0.9, 0.6, 0.6, 0.6, 0.2], [0.1, 0.2, 0.3, 0.4, 0.7]])
    result = evaluate(y_true, scores)
    # Thresholded: row 0 predicts {0,1,2,3}, row 1 predicts {4}.
    # Top 3: row 0 = label 0, then labels 1 and 2 of the three tied at 0.6 (lowest index first),
    # so label 3 drops out; row 1 = labels 4, 3, 2, of which only 4 passes the threshold.
    # Top-3 counts: Ng = [0,0,1,2,1], Np = [1,1,1,0,1] -> [1,1,1,1,1], Nc = [0,0,1,0,1].
    assert result["OP_top3"] == pytest.approx(2 / 5)
    assert result["OR_top3"] == pytest.approx(2 / 4)
    assert result["OF1_top3"] == pytest.approx(4 / 9)  # 2·(2/5)(1/2) / (2/5 + 1/2)
    assert result["CP_top3"] == pytest.approx(2 / 5)
    assert result["CR_top3"] == pytest.approx(2 / 3)  # classes 2, 3, 4: (1 + 0/2 + 1) / 3
    assert result.undefined["CR_top3"] == 2
    assert result["CF1_top3"] == pytest.approx(1 / 2)  # 2·(2/5)(2/3) / (2/5 + 2/3)
    # Without the top-3 cut label 3 is predicted in row 0: Nc = [0,0,1,1,1].
    assert result["OP"] == pytest.approx(3 / 5)
    assert result["CR"] == pytest.approx(5 / 6)  # (1 + 1/2 + 1) / 3


def test_map_by_hand_ties_and_ignore():
    y_true = np.array([[1, 1], [0, 0], [1, 1]])
    scores = np.array([[0.9, 0.5], [0.8, 0.5], [0.7, 0.2]])
    result = evaluate(y_true, scores)
    # label 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2 = 5/6.
    # label 1: 0.5 is one threshold holding a positive and a negative: precision 1/2 there,
    # then 2/3 at 0.2 -> (1/2 + 2/3) / 2 = 7/12.
    np.testing.assert_allclose(result.per_label_ap, [5 / 6, 7 / 12])
    assert result["mAP"] == pytest.approx((5 / 6 + 7 / 12) / 2)

    # ignoring the negative of label 0 leaves its positives at ranks 1 and 2 -> AP 1;
    # ignoring both positives of label 1 leaves it without positives -> NaN, left out of mAP.
    ignore = np.array([[False, True], [True, False], [False, True]])
    result = evaluate(y_true, scores, ignore=ignore)
    assert result.per_label_ap[0] == 1.0
    assert math.isnan(result.per_label_ap[1])
    assert result["mAP"] == 1.0
    assert result.undefined["mAP"] == 1


def test_explicit_y_pred_is_used_instead_of_the_threshold():
    y_true = np.array([[1, 0, 1], [0, 1, 0]])
    scores = np.array([[0.9, 0.1, 0.2], [0.3, 0.4, 0.1]])
    y_pred = np.array([[1, 0, 1], [0, 1, 0]])  # perfect, though scores >= 0.5 would miss two
    result = evaluate(y_true, scores, y_pred=y_pred)
    assert result["subset_accuracy"] == 1.0
    assert result["hamming_loss"] == 0.0
    assert evaluate(y_true, scores)["hamming_loss"] == pytest.approx(2 / 6)


def test_metrics_undefined_for_the_whole_input_are_nan():
    y_true = np.zeros((3, 4), dtype=int)
    scores = np.full((3, 4), 0.1)  # nothing predicted either
    result = evaluate(y_true, scores)
    undefined = {
        "one_error",
        "average_precision",
        "macro_f1",
        "micro_f1",
        "mAP",
        "CR",
        "CF1",
        "OR",
        "OF1",
        "CR_top3",
        "CF1_top3",
        "OR_top3",
        "OF1_top3",
    }
    assert {name for name, value in result.items() if math.isnan(value)} == undefined
    assert result["coverage"] == 0.0  # MULAN: rows without labels count as 0
    assert result["ranking_loss"] == 0.0  # scikit-learn, MULAN, Clus: no pair, a loss of 0
    assert result["example_f1"] == 1.0  # empty predicted set for an empty true set
    assert result["CP"] == 0.0  # Np[Np == 0] = 1 makes every class precision 0
    assert result.undefined == {
        "one_error": 3,
        "average_precision": 3,
        "macro_f1": 4,
        "CR": 4,
        "CR_top3": 4,
        "mAP": 4,
    }


def test_accepts_bool_int_float32_and_sparse_inputs():
    import scipy.sparse

    y_true, scores = CASES["ints-a"]
    expected = evaluate(y_true, scores)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning on the way
        same = evaluate(scipy.sparse.csr_matrix(y_true.astype(bool)), scores.tolist())
    assert same == expected
    # k/3 in float32 keeps the order, the ties and the side of 0.5 of every score.
    as_float32 = evaluate(y_true.astype(np.float32), scores.astype(np.float32))
    assert as_float32 == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scores": np.zeros((3, 5))}, r"scores has shape \(3, 5\) but y_true has shape \(3, 4\)"),
        ({"y_true": np.full((3, 4), 2)}, r"y_true must contain only 0 and 1, found 2 at row 0, label 0"),
        ({"y_true": np.zeros(4)}, r"y_true must be 2-D"),
        ({"y_true": np.zeros((0, 4)), "scores": np.zeros((0, 4))}, r"y_true is empty"),
        (
            {"scores": np.array([[0.1, np.nan, 0, 0]] * 3)},
            r"scores must be finite, found nan at row 0, label 1",
        ),
        ({"scores": np.full((3, 4), np.inf)}, r"scores must be finite, found inf"),
        ({"scores": [["a"] * 4] * 3}, r"scores must be a numeric array"),
        ({"y_pred": np.zeros((4, 3))}, r"y_pred has shape \(4, 3\) but y_true has shape \(3, 4\)"),
        ({"y_pred": np.full((3, 4), 0.5)}, r"y_pred must contain only 0 and 1, found 0.5"),
        ({"ignore": np.zeros((3, 3), dtype=bool)}, r"ignore has shape \(3, 3\)"),
    ],
)
def test_bad_input_raises_a_one_line_bench_error(kwargs, message):
    arguments = {"y_true": np.zeros((3, 4), dtype=int), "scores": np.zeros((3, 4))} | kwargs
    with pytest.raises(BenchError, match=message) as error:
        evaluate(**arguments)
    assert "\n" not in str(error.value)
