"""Multi-label evaluation metrics: one call, :func:`evaluate`, returns every number the tables use.

Notation: ``n`` examples, ``L`` labels; ``Y_i`` the relevant labels of example ``i`` (``y_true``),
``f_ij`` its score for label ``j`` (``scores``), ``Ŷ_i`` its predicted labels (``y_pred``, by
default ``scores >= 0.5``).

Conventions, each with its source. Where a metric is undefined for an example or a label (a 0/0)
and its sources leave it out, that example or label is *left out of the average* and the number
left out is recorded in ``MetricResult.undefined``; a metric is NaN only when it is undefined for
the whole input. Ranking loss and coverage, whose sources score such an example (0), count it.

Example-based and label-ranking metrics (Zhang & Zhou, "A review on multi-label learning
algorithms", IEEE TKDE 26(8), 2014, section 2.2; MULAN's ``mulan.evaluation.measure``):

* ``hamming_loss``: fraction of wrong (example, label) entries; equals
  ``sklearn.metrics.hamming_loss``.
* ``ranking_loss``: per example, the fraction of (relevant, irrelevant) label pairs with
  ``f(relevant) <= f(irrelevant)``; a tie counts as mis-ordered (Zhang & Zhou; scikit-learn's
  ``label_ranking_loss`` does the same). An example with no relevant or no irrelevant label has no
  pair to mis-order: it scores 0 and is counted in the mean, as scikit-learn's
  ``label_ranking_loss``, MULAN 1.5's loss-based ``mulan.evaluation.loss.RankingLoss`` (returns 0)
  and Clus's ``RankingLoss`` (counts the example, adds nothing) do; so the value equals
  scikit-learn's on any input and is never undefined. (Stores written before this convention are
  converted on reading: :mod:`bench.records`.)
* ``one_error``: over examples with at least one relevant label (the others are skipped), the
  fraction whose top-ranked label is irrelevant. Ties at the top are broken pessimistically: it is
  an error if any label sharing the top score is irrelevant, as ranking loss counts ties.
* ``coverage``: 0-based, MULAN's ``Coverage`` (``rank - 1``): per example, the number of labels
  scoring ``>=`` the lowest-scored relevant label, minus 1 (ties pessimistic, as scikit-learn's
  ``coverage_error``). An example with no relevant label contributes 0 and is still counted (MULAN's
  ``Coverage.updateRanking`` leaves ``howDeep = 0``), so this is *not* ``coverage_error - 1`` when
  such rows exist: it is the mean over rows of ``coverage_error_row - 1`` for rows with labels and
  ``0`` for the others.
* ``average_precision``: label-ranking average precision (Zhang & Zhou): per example, the mean over
  relevant ``j`` of ``|{k in Y: f_k >= f_j}| / |{k: f_k >= f_j}|``. Examples with no relevant label
  are skipped (scikit-learn's ``label_ranking_average_precision_score`` scores them 1).
* ``subset_accuracy``: exact-match ratio (scikit-learn's ``accuracy_score`` on multi-label input).
* ``example_f1``: per example ``2|Y ∩ Ŷ| / (|Y| + |Ŷ|)``, and 1 when both sets are empty; the mean
  over examples (scikit-learn's ``f1_score(average="samples", zero_division=1.0)``).
* ``macro_f1``: per label ``2tp / (2tp + fp + fn)``; a label with ``2tp + fp + fn == 0`` (never
  relevant, never predicted) is undefined and left out of the mean (scikit-learn's
  ``f1_score(average="macro", zero_division=np.nan)``).
* ``micro_f1``: ``2TP / (2TP + FP + FN)`` pooled over all entries; NaN when the denominator is 0.

Per-class and overall precision/recall/F1, ``CP CR CF1 OP OR OF1``: ML-GCN's
``AveragePrecisionMeter.evaluation`` (Chen et al., CVPR 2019; megvii-research/ML-GCN, ``util.py``),
to the letter. Per class ``c``: ``Ng`` relevant examples, ``Np`` predicted, ``Nc`` correctly
predicted; then ``Np[Np == 0] = 1`` (a never-predicted class gets precision 0; note that, as in
ML-GCN, the replaced 1 also enters ``ΣNp`` in ``OP``). ``OP = ΣNc/ΣNp``, ``OR = ΣNc/ΣNg``,
``CP = mean_c Nc/Np``, ``CR = mean_c Nc/Ng``, ``CF1 = 2·CP·CR/(CP+CR)`` and ``OF1`` likewise: the
harmonic mean of the averaged precision and recall, *not* the mean of per-class F1. An F1 with
``P + R == 0`` is 0. The one case ML-GCN's code leaves undefined: a class with ``Ng == 0`` makes
``Nc/Ng = 0/0`` (NaN there); such classes are left out of the ``CR`` mean and counted in
``undefined["CR"]``. The predictions are ``y_pred`` (default ``scores >= 0.5``, the probability
equivalent of ML-GCN's ``logit >= 0``).

``*_top3``: ML-GCN's ``overall_topk(3)``: of each example's three highest-scored labels, those that
also pass the threshold (``y_pred == 1``) count as predicted, all others as not predicted; then the
same six numbers. With ``L < 3`` every label is in the top 3. Ties for the top 3 (which ML-GCN's
``torch.topk`` leaves unspecified) are broken as a stable sort on descending score would: the lowest
label index first.

``mAP``: mean over labels of the non-interpolated average precision of that label's ranking of the
examples, as ``sklearn.metrics.average_precision_score``: ``Σ_t (R_t - R_{t-1}) P_t`` over the
distinct score thresholds ``t``, so examples tied in score form one threshold. Entries marked in
``ignore`` (Pascal VOC's "difficult" labels, which ML-GCN skips with ``difficult_examples=True``) are
removed from the label's ranking first. In ``CP … OF1`` and their top-3 versions an ``ignore``d
entry counts as a negative, as in ML-GCN's ``overall()``/``overall_topk()`` (its targets code a
difficult label 0, and ``targets[targets == -1] = 0`` makes negatives 0 too); the other metrics
take ``y_true`` as given. A label with no positive (after ``ignore``) is undefined: NaN in ``per_label_ap``, left out
of ``mAP``. ML-GCN's ``AveragePrecisionMeter.average_precision`` loop computes the same value when
the scores have no ties (with ties, its value depends on the sort order it happens to get).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from bench.errors import BenchError

#: How many labels the ``*_top3`` metrics keep per example (ML-GCN's ``overall_topk(3)``).
TOP_K = 3

#: Elements per block in the row-chunked ranking computations: large enough to amortise numpy's
#: per-call overhead, small enough to keep the few temporaries of a block in cache.
_CHUNK_ELEMENTS = 2**16


@dataclass(frozen=True)
class Metric:
    """One reported metric: its key in :class:`MetricResult`, direction, and table label."""

    name: str
    higher_is_better: bool
    label: str
    description: str


# Module-level data, not a function run at import: every entry is a literal a test pins.
_lower, _higher = False, True
_ROWS = [
    ("hamming_loss", _lower, "Hamming loss", "Fraction of wrong (example, label) entries."),
    (
        "ranking_loss",
        _lower,
        "Ranking loss",
        "Fraction of (relevant, irrelevant) label pairs mis-ordered; ties count as mis-ordered.",
    ),
    ("one_error", _lower, "One-error", "Fraction of examples whose top-ranked label is irrelevant."),
    (
        "coverage",
        _lower,
        "Coverage",
        "How far down the ranking one must go to cover all relevant labels (0-based, MULAN).",
    ),
    (
        "average_precision",
        _higher,
        "Average precision",
        "Label-ranking average precision (Zhang & Zhou 2014).",
    ),
    ("subset_accuracy", _higher, "Subset accuracy", "Fraction of examples predicted exactly."),
    ("example_f1", _higher, "Example-F1", "Mean over examples of the F1 of the predicted label set."),
    ("macro_f1", _higher, "Macro-F1", "Mean over labels of the per-label F1."),
    ("micro_f1", _higher, "Micro-F1", "F1 of all (example, label) entries pooled."),
]
_FAMILY = [
    ("CP", "Per-class precision, averaged over classes (ML-GCN)."),
    ("CR", "Per-class recall, averaged over classes with a positive (ML-GCN)."),
    ("CF1", "Harmonic mean of CP and CR (ML-GCN)."),
    ("OP", "Overall precision, pooled over classes (ML-GCN)."),
    ("OR", "Overall recall, pooled over classes (ML-GCN)."),
    ("OF1", "Harmonic mean of OP and OR (ML-GCN)."),
]
_ROWS += [(name, _higher, name, text) for name, text in _FAMILY]
_ROWS += [
    (f"{name}_top3", _higher, f"{name} (top-3)", f"{text[:-1]}, top-3 predictions only.")
    for name, text in _FAMILY
]
_ROWS.append(("mAP", _higher, "mAP", "Mean over labels of the per-label average precision."))


#: Every metric :func:`evaluate` reports, in the order of the result's keys.
METRICS: dict[str, Metric] = {name: Metric(name, better, label, text) for name, better, label, text in _ROWS}

#: The metrics where a smaller value is better.
LOWER_IS_BETTER: frozenset[str] = frozenset(name for name, m in METRICS.items() if not m.higher_is_better)


#: The metric columns each family of papers reports, for paper-style tables. A dataset plug-in
#: names its family in ``Dataset.metric_set``; "all" shows every metric.
METRIC_SETS: dict[str, tuple[str, ...]] = {
    # RMLC, Tables III-IV (multi-modal feature sets)
    "multimodal": ("hamming_loss", "ranking_loss", "subset_accuracy", "macro_f1", "example_f1", "micro_f1"),
    # RETDM, Tables II-IV (scene, MIRFLICKR, COCO)
    "retdm": ("CP", "CR", "CF1", "OP", "OR", "OF1", "hamming_loss", "ranking_loss", "coverage",
              "one_error", "average_precision"),
    # DER / CMSG / Order-Free RNN on COCO and NUS-WIDE (ML-GCN's columns)
    "coco": ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1",
             "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3"),
    # Pascal VOC: per-class AP is a separate table; the main table shows mAP
    "voc": ("mAP",),
    "all": tuple(METRICS),
}


def direction_arrow(name: str) -> str:
    """``"↓"`` for a metric where lower is better, ``"↑"`` otherwise (for table headers)."""
    if name not in METRICS:
        raise BenchError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}")
    return "↓" if name in LOWER_IS_BETTER else "↑"


class MetricResult(dict):
    """The metrics of one evaluation: a ``dict`` of metric name -> float, keys in ``METRICS`` order.

    Attributes:
        per_label_ap: float array [L], each label's average precision; NaN where undefined.
        undefined: metric name -> how many examples or labels were left out of its average.
    """

    def __init__(self, values: dict[str, float], per_label_ap: np.ndarray, undefined: dict[str, int]):
        super().__init__((name, values[name]) for name in METRICS)
        self.per_label_ap = per_label_ap
        self.undefined = undefined


def evaluate(y_true, scores, y_pred=None, ignore=None) -> MetricResult:
    """Compute every metric of :data:`METRICS` (see the module docstring for the conventions).

    Args:
        y_true: {0,1} array [n, L], the relevant labels (dense or scipy sparse).
        scores: finite float array [n, L], per-label confidences (probabilities).
        y_pred: {0,1} array [n, L], the predicted label sets; default ``scores >= 0.5``.
        ignore: optional bool array [n, L] of entries left out of ``mAP`` / ``per_label_ap`` and
            counted as negatives in ``CP … OF1`` (Pascal VOC "difficult" labels, as ML-GCN); default none.

    Raises:
        BenchError: an argument has the wrong shape or values.
    """
    y_true = _binary_matrix("y_true", y_true)
    scores = _score_matrix(scores, y_true.shape)
    y_pred = scores >= 0.5 if y_pred is None else _binary_matrix("y_pred", y_pred, y_true.shape)
    ignore = np.zeros_like(y_true) if ignore is None else _binary_matrix("ignore", ignore, y_true.shape)

    values: dict[str, float] = {}
    undefined: dict[str, int] = {}
    values["hamming_loss"] = float(np.mean(y_true != y_pred))
    _add(values, undefined, _ranking_metrics(y_true, scores))
    values["subset_accuracy"] = float(np.mean(np.all(y_true == y_pred, axis=1)))
    _add(values, undefined, _f1_metrics(y_true, y_pred))
    mlgcn_true = y_true & ~ignore  # ML-GCN's overall(): a difficult label (target 0) counts as a negative
    _add(values, undefined, _mlgcn_metrics(mlgcn_true, y_pred))
    _add(values, undefined, _mlgcn_metrics(mlgcn_true, y_pred & _top_k_mask(scores, TOP_K), suffix="_top3"))
    per_label_ap = _per_label_ap(y_true, scores, ignore)
    values["mAP"], undefined["mAP"] = _mean_of_defined(per_label_ap)
    return MetricResult(values, per_label_ap, undefined)


def _add(values: dict, undefined: dict, computed: tuple[dict, dict]) -> None:
    values.update(computed[0])
    undefined.update(computed[1])


# --------------------------------------------------------------------------------------------
# Input validation


def _matrix(name: str, x) -> np.ndarray:
    """``x`` as a dense 2-D numeric (integer, float or bool) array with at least one entry."""
    if scipy.sparse.issparse(x):
        x = x.toarray()
    try:
        x = np.asarray(x)
    except (TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0]
        raise BenchError(f"{name} must be a numeric array [n_examples, n_labels]: {reason}") from None
    if x.ndim != 2:
        raise BenchError(f"{name} must be 2-D [n_examples, n_labels], got shape {x.shape}")
    if x.size == 0:
        raise BenchError(f"{name} is empty (shape {x.shape}): need at least one example and one label")
    if not (x.dtype == bool or np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise BenchError(f"{name} must be a numeric array [n_examples, n_labels], got dtype {x.dtype}")
    return x


def _check_shape(name: str, x: np.ndarray, shape: tuple[int, int] | None) -> None:
    if shape is not None and x.shape != shape:
        raise BenchError(f"{name} has shape {x.shape} but y_true has shape {shape}; they must match")


def _binary_matrix(name: str, x, shape: tuple[int, int] | None = None) -> np.ndarray:
    x = _matrix(name, x)
    _check_shape(name, x, shape)
    if x.dtype == bool:
        return x
    bad = (x != 0) & (x != 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        found = x[row, col].item()
        raise BenchError(f"{name} must contain only 0 and 1, found {found!r} at row {row}, label {col}")
    return x.astype(bool)


def _score_matrix(scores, shape: tuple[int, int]) -> np.ndarray:
    scores = _matrix("scores", scores)
    _check_shape("scores", scores, shape)
    # float64 keeps the order and the ties of any integer or float32 input exactly.
    scores = scores.astype(np.float64, copy=False)
    bad = ~np.isfinite(scores)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise BenchError(f"scores must be finite, found {scores[row, col].item()} at row {row}, label {col}")
    return scores


# --------------------------------------------------------------------------------------------
# Shared helpers


def _mean_of_defined(values: np.ndarray) -> tuple[float, int]:
    """The mean of the non-NaN entries (NaN if none) and how many entries were NaN."""
    defined = ~np.isnan(values)
    n_skipped = int(values.size - defined.sum())
    mean = float(values[defined].mean()) if defined.any() else float("nan")
    return mean, n_skipped


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ``numerator / denominator``, NaN where the denominator is 0 (undefined)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    out = np.full(numerator.shape, np.nan)
    np.divide(numerator, denominator, out=out, where=np.asarray(denominator) != 0)
    return out


def _harmonic_mean(precision: float, recall: float) -> float:
    """F1 of a precision and a recall; 0 when both are 0, NaN when either is undefined."""
    if np.isnan(precision) or np.isnan(recall):
        return float("nan")
    total = precision + recall
    return float(2 * precision * recall / total) if total > 0 else 0.0


def _tie_group_end(sorted_values: np.ndarray) -> np.ndarray:
    """For each position of rows sorted in descending order, the last position of its tie group.

    Counting through the *end* of the tie group makes every "number of items scoring >= x" count
    include all the items tied with x, which is how ties are treated throughout (pessimistic).
    """
    n_cols = sorted_values.shape[1]
    is_end = np.ones(sorted_values.shape, dtype=bool)
    is_end[:, :-1] = sorted_values[:, :-1] != sorted_values[:, 1:]
    end = np.where(is_end, np.arange(n_cols), n_cols - 1)
    # the end of a group is the first group end at or after the position: a reversed running min.
    return np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]


def _row_chunks(n_rows: int, n_cols: int):
    step = max(1, _CHUNK_ELEMENTS // n_cols)
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


# --------------------------------------------------------------------------------------------
# Label-ranking metrics (Zhang & Zhou 2014; MULAN)


def _ranking_counts(y_true: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example counts behind the four ranking metrics, for a block of rows.

    Each row is sorted by descending score; for the label at each sorted position,
    ``n_geq`` = number of labels scoring >= it and ``rel_geq`` = number of relevant ones among them.
    """
    order = np.argsort(-scores, axis=1)
    sorted_scores = np.take_along_axis(scores, order, axis=1)
    relevant = np.take_along_axis(y_true, order, axis=1)
    end = _tie_group_end(sorted_scores)
    n_geq = end + 1
    rel_geq = np.take_along_axis(np.cumsum(relevant, axis=1), end, axis=1)
    irr_geq = n_geq - rel_geq
    return {
        "n_relevant": relevant.sum(axis=1),
        # pairs (relevant j, irrelevant k) with f_k >= f_j: the mis-ordered pairs, ties included.
        "misordered": np.where(relevant, irr_geq, 0).sum(axis=1),
        "precision_sum": np.where(relevant, rel_geq / n_geq, 0.0).sum(axis=1),
        # labels scoring >= the lowest-scored relevant one; 1 for a row without relevant labels,
        # so that its coverage (this - 1) is MULAN's 0.
        "depth": np.where(relevant, n_geq, 1).max(axis=1),
        # position 0 belongs to the top tie group, whose size is n_geq[:, 0].
        "top_has_irrelevant": irr_geq[:, 0] > 0,
    }


def _ranking_metrics(y_true: np.ndarray, scores: np.ndarray) -> tuple[dict, dict]:
    n, n_labels = y_true.shape
    blocks = [_ranking_counts(y_true[rows], scores[rows]) for rows in _row_chunks(n, n_labels)]
    counts = {key: np.concatenate([block[key] for block in blocks]) for key in blocks[0]}
    n_relevant = counts["n_relevant"]
    has_relevant = n_relevant > 0

    # no (relevant, irrelevant) pair: nothing mis-ordered, a loss of 0 that counts (scikit-learn).
    pairs = n_relevant * (n_labels - n_relevant)
    ranking_loss = np.where(pairs > 0, _ratio(counts["misordered"], pairs), 0.0)
    one_error = np.where(has_relevant, counts["top_has_irrelevant"], np.nan)
    average_precision = _ratio(counts["precision_sum"], n_relevant)

    values, undefined = {}, {}
    values["ranking_loss"] = float(ranking_loss.mean())
    values["one_error"], undefined["one_error"] = _mean_of_defined(one_error)
    values["coverage"] = float(np.mean(counts["depth"] - 1))
    values["average_precision"], undefined["average_precision"] = _mean_of_defined(average_precision)
    return values, undefined


# --------------------------------------------------------------------------------------------
# Threshold-based F1 metrics


def _f1_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[dict, dict]:
    hits = y_true & y_pred

    # example-F1: 2|Y ∩ Ŷ| / (|Y| + |Ŷ|), and 1 when both sets are empty (a perfect prediction).
    set_sizes = y_true.sum(axis=1) + y_pred.sum(axis=1)
    example_f1 = np.where(set_sizes == 0, 1.0, _ratio(2 * hits.sum(axis=1), set_sizes))

    # per label, 2tp + fp + fn == |relevant| + |predicted|.
    tp = hits.sum(axis=0)
    label_sizes = y_true.sum(axis=0) + y_pred.sum(axis=0)
    macro_f1, n_undefined_labels = _mean_of_defined(_ratio(2 * tp, label_sizes))
    micro_f1 = _ratio(2 * tp.sum(), label_sizes.sum())

    values = {"example_f1": float(example_f1.mean()), "macro_f1": macro_f1, "micro_f1": float(micro_f1)}
    return values, {"macro_f1": n_undefined_labels}


# --------------------------------------------------------------------------------------------
# ML-GCN's per-class / overall precision, recall, F1


def _top_k_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k highest-scored labels, ties broken by the lowest label index (a stable sort)."""
    n_labels = scores.shape[1]
    if k >= n_labels:
        return np.ones(scores.shape, dtype=bool)
    kth_largest = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
    above = scores > kth_largest
    tied = scores == kth_largest
    # the labels tied with the k-th score fill the remaining places in index order.
    n_places = k - above.sum(axis=1, keepdims=True)
    return above | (tied & (np.cumsum(tied, axis=1) <= n_places))


def _mlgcn_metrics(y_true: np.ndarray, predicted: np.ndarray, suffix: str = "") -> tuple[dict, dict]:
    """ML-GCN's ``AveragePrecisionMeter.evaluation``; ``predicted`` plays ``scores >= 0``."""
    n_relevant = y_true.sum(axis=0)  # Ng
    n_predicted = predicted.sum(axis=0)  # Np
    n_correct = (y_true & predicted).sum(axis=0)  # Nc
    n_predicted = np.where(n_predicted == 0, 1, n_predicted)  # ML-GCN: Np[Np == 0] = 1

    op = float(n_correct.sum() / n_predicted.sum())
    or_ = float(_ratio(n_correct.sum(), n_relevant.sum()))
    cp = float(np.mean(n_correct / n_predicted))
    # a class without positives has recall 0/0 (NaN in ML-GCN): left out of the CR mean.
    cr, n_undefined_classes = _mean_of_defined(_ratio(n_correct, n_relevant))
    values = {
        "CP": cp,
        "CR": cr,
        "CF1": _harmonic_mean(cp, cr),
        "OP": op,
        "OR": or_,
        "OF1": _harmonic_mean(op, or_),
    }
    return {name + suffix: value for name, value in values.items()}, {"CR" + suffix: n_undefined_classes}


# --------------------------------------------------------------------------------------------
# Per-label average precision (mAP)


def _per_label_ap(y_true: np.ndarray, scores: np.ndarray, ignore: np.ndarray) -> np.ndarray:
    """Non-interpolated AP of each label's ranking of the examples, ``ignore``d entries removed."""
    # one contiguous row per label makes each column extraction below a cheap slice.
    scores_t = np.ascontiguousarray(scores.T)
    positive_t = np.ascontiguousarray((y_true & ~ignore).T)
    kept_t = None if not ignore.any() else np.ascontiguousarray(~ignore.T)
    ap = np.full(scores_t.shape[0], np.nan)
    for label, label_scores in enumerate(scores_t):
        kept_scores = label_scores if kept_t is None else label_scores[kept_t[label]]
        ap[label] = _average_precision(kept_scores, label_scores[positive_t[label]])
    return ap


def _average_precision(scores: np.ndarray, positive_scores: np.ndarray) -> float:
    """AP of one ranking: the mean over positives p of precision at threshold ``f_p``.

    Precision at threshold t is |{positives >= t}| / |{examples >= t}|; counting with ``>=``
    puts a whole group of tied scores on one threshold, as scikit-learn's
    ``average_precision_score`` does (``Σ_t (R_t - R_{t-1}) P_t`` gives each positive of the
    group the group's precision). NaN when there is no positive.
    """
    if positive_scores.size == 0:
        return float("nan")
    # sorting and binary search beat an argsort of the column followed by gathers.
    all_sorted = np.sort(scores)
    positive_sorted = np.sort(positive_scores)
    n_geq = all_sorted.size - np.searchsorted(all_sorted, positive_sorted, side="left")
    n_positive_geq = positive_sorted.size - np.searchsorted(positive_sorted, positive_sorted, side="left")
    return float(np.mean(n_positive_geq / n_geq))
