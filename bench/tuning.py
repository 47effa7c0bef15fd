"""In-fold selection: the hyper-parameters a paper chooses "by cross-validation", chosen inside each
job on the validation carve-out of its training part, never on the test fold.

The search
----------
A **search** is a grid of candidate values for some of a method's hyper-parameters and the metric
that picks one. Two sources, the second winning key by key:

1. the method's own declaration, the class attribute ``search`` (``{param: (v1, v2, ...)}``; RETDM:
   α over a small log grid), optionally with ``search_metric`` (a name of
   :data:`bench.metrics.METRICS`);
2. ``bench run --tune key=v1,v2,...`` (repeatable; ``method.key=...`` scopes it to one method), for
   any parameter of any method.

A parameter the user fixes with ``--set`` leaves the declared search (``--set alpha=1`` runs the
fixed α = 1), unless ``--tune`` names it too. An ablation that removes a parameter (``retdm_bce``
has no ``alpha``) does not search it. The metric is ``search_metric``, else the method's
early-stopping metric (``monitor="val_mAP"`` -> ``mAP``; ``val_loss`` or no ``monitor``:
``mAP``). Each value is checked like a ``--set`` value (the parameter's annotation, then the
method's own validation of every candidate), before any job starts.

Inside a job (:func:`fit`)
--------------------------
The training part is split once into a fitting part and a validation carve-out: the method's own
carve-out when it has one (``val_fraction`` > 0, with its ``random_state``: the very split its early
stopping and learning-rate schedule use, handed to ``fit(train, val)``), else a stratified
:data:`VAL_FRACTION` of it. Every candidate of the grid (the product of the per-parameter values,
the first parameter varying slowest) is fitted on the fitting part and scored on the carve-out;
the first best in grid order wins (ties and undefined scores never displace an earlier one). The
best candidate's model *is* the job's model, trained on the fitting part, as early stopping's
model already is: it is not refitted on the whole training part, so the model that is tested is
the one that was chosen. (For a method without a carve-out of its own, ``br``, a tuned job
therefore trains on 90 % of the training part.) The test part never reaches this module.

A job with a search is atomic: an interrupted job re-runs all its candidates (finished jobs of the
same command are skipped as always).

What is recorded
----------------
The job's configuration holds the search (``config["search"]``: ``grid``, ``metric``), so the
*search* is the row: folds that choose differently stay one row, and the tuned parameters keep
their base value in ``config["params"]``. The record's ``search`` adds ``val_fraction``,
``n_fit``/``n_val``, every candidate's parameters and validation score, and ``chosen``; the
tables footnote the values chosen per fold (:func:`chosen_note`), MLflow logs them
(``search.<param>`` parameters, ``search_val_<metric>`` metric).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Mapping

import numpy as np

from bench.data import MultiLabelData
from bench.errors import BenchError
from bench.metrics import LOWER_IS_BETTER, METRICS, evaluate
from bench.protocols import validation_split

#: The carve-out of a method that has none of its own (no ``val_fraction`` > 0).
VAL_FRACTION = 0.1
#: The metric of a method that names neither ``search_metric`` nor a metric ``monitor``.
DEFAULT_METRIC = "mAP"


# ----------------------------------------------------------------------------- parsing and checks
def parse_tune(pairs: list[str]) -> dict[str, list]:
    """``["alpha=0.1,0.01", "retdm.beta=1,0"]`` -> ``{"alpha": [0.1, 0.01], ...}``: each value parsed
    like a ``--set`` value; an empty grid, a repeated value or a key given twice is an error."""
    from bench.params import parse_value, split_pairs

    out: dict[str, list] = {}
    for key, raw in split_pairs(pairs, "--tune", "key=v1,v2,...").items():
        values = [parse_value(v) for v in raw.split(",") if v.strip()]
        if not values:
            raise BenchError(f"--tune {key}: the grid is empty; expected key=v1,v2,...")
        if len({repr(v) for v in values}) != len(values):
            raise BenchError(f"--tune {key}: a value is given twice in {raw!r}")
        out[key] = values
    return out


def check_tune_keys(tune: Mapping[str, list], classes: list[type]) -> None:
    """Every ``--tune`` key must name a hyper-parameter of a selected method (of that method when
    scoped), as ``--set`` keys must; the execution parameters (device, ...) are not tunable."""
    from bench.api import EXECUTION_PARAMS, PER_RUN_PARAMS
    from bench.params import check_override_keys

    check_override_keys(dict(tune), classes, "--tune", EXECUTION_PARAMS | PER_RUN_PARAMS)


def search_for(cls: type, tune: Mapping[str, list], overrides: Mapping[str, object]) -> dict:
    """The search a job of ``cls`` runs (``{"grid": {param: [values]}, "metric": name}``), or ``{}``.

    The method's declared ``search`` less the parameters ``--set`` fixes, then the applicable
    ``--tune`` grids; every value checked against the parameter's annotation."""
    from bench.params import _coerced, applicable, defaults

    params = defaults(cls)
    fixed = applicable(cls, dict(overrides), params)
    grid = {k: list(v) for k, v in (getattr(cls, "search", None) or {}).items() if k in params and k not in fixed}
    grid.update({k: list(v) for k, v in applicable(cls, dict(tune), params).items()})
    if not grid:
        return {}
    for name, values in grid.items():
        source = "--tune" if name in tune or f"{cls.name}.{name}" in tune else f"method {cls.name!r} search"
        grid[name] = [_coerced(cls, {name: v}, source)[name] for v in values]
        if len({repr(v) for v in grid[name]}) != len(values):  # 1 and 1.0 are one value of a float
            raise BenchError(f"{source} {name}: a value is given twice in {values}")
    return {"grid": grid, "metric": search_metric(cls, params)}


def search_metric(cls: type, params: Mapping[str, object]) -> str:
    """``cls.search_metric``, else the metric of ``monitor`` (``val_mAP`` -> ``mAP``), else mAP."""
    declared = getattr(cls, "search_metric", None)
    if declared:
        if declared not in METRICS:
            raise BenchError(f"method {cls.name!r}: search_metric must be one of {', '.join(METRICS)}, "
                             f"got {declared!r}")
        return declared
    monitor = params.get("monitor")
    if isinstance(monitor, str) and monitor.startswith("val_") and monitor[4:] in METRICS:
        return monitor[4:]
    return DEFAULT_METRIC


def candidates(grid: Mapping[str, list]) -> list[dict]:
    """The grid's candidates in order: the product of the values, the first parameter slowest."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


# ----------------------------------------------------------------------------- in the job
def carve_out(cls: type, params: Mapping[str, object], train: MultiLabelData
              ) -> tuple[MultiLabelData, MultiLabelData, float, bool]:
    """(fitting part, validation part, fraction, whether the method is handed it as ``val``): the
    method's own carve-out (``val_fraction``, ``random_state``) when it has one, else
    :data:`VAL_FRACTION` of ``train``."""
    own = float(params.get("val_fraction") or 0.0)
    fraction = own if own > 0 else VAL_FRACTION
    fit_part, val = validation_split(train, fraction, int(params.get("random_state") or 0))
    return fit_part, val, fraction, own > 0


def fit(cls: type, params: Mapping[str, object], train: MultiLabelData, search: Mapping | None,
        before_each: Callable[[], None] = lambda: None):
    """The job's fitted model and its search record (None without a search): see the module docstring.

    ``train`` is the job's training part (the test part is not an argument); ``before_each`` runs
    before every fit (the worker re-seeds there)."""
    if not search:
        before_each()
        return cls(**params).fit(train), None
    fit_part, val, fraction, hand_over = carve_out(cls, params, train)
    metric = search["metric"]
    lower = metric in LOWER_IS_BETTER
    best, best_score, tried = None, math.nan, []
    for candidate in candidates(search["grid"]):
        before_each()
        method = cls(**{**params, **candidate})
        method.fit(fit_part, val) if hand_over and _takes_val(method) else method.fit(fit_part)
        score = validation_score(method, val, metric)
        tried.append({"params": candidate, "score": score})
        if best is None or (not math.isnan(score) and (math.isnan(best_score) or
                                                        (score < best_score if lower else score > best_score))):
            best, best_score, chosen = method, score, candidate
    record = {"grid": search["grid"], "metric": metric, "val_fraction": fraction, "n_fit": int(fit_part.n_samples),
              "n_val": int(val.n_samples), "candidates": tried, "chosen": chosen, "score": best_score}
    return best, record


def validation_score(method, val: MultiLabelData, metric: str) -> float:
    """``metric`` of ``method``'s predictions on the carve-out (NaN where it is undefined there)."""
    scores = np.asarray(method.predict_scores(val), dtype=np.float64)
    y_pred = np.asarray(method.predict(val), dtype=np.uint8)
    value = evaluate(val.Y, scores, y_pred, ignore=val.ignore)[metric]
    return float(value) if value is not None else math.nan


def _takes_val(method) -> bool:
    return "val" in inspect.signature(method.fit).parameters


# ----------------------------------------------------------------------------- read side
def search_label(search: Mapping) -> str:
    """``tune alpha in {0.1, 0.01, 0.001} on val mAP``: a search as a row label part (no ``|``,
    which would split a Markdown cell)."""
    grid = ", ".join(f"{k} in {{{', '.join(map(str, v))}}}" for k, v in search["grid"].items())
    return f"tune {grid} on val {search['metric']}"


def chosen_note(label: str, chosen: list[tuple[int, int, dict]]) -> str:
    """The footnote of one searched row: the values chosen, per (seed, fold)."""
    parts = [f"seed {seed} fold {fold}: " + ", ".join(f"{k}={v}" for k, v in values.items())
             for seed, fold, values in sorted(chosen, key=lambda c: (c[0], c[1]))]
    return f"{label}: chosen on each training fold's validation carve-out ({'; '.join(parts)})."
