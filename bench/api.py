"""The two plug-in base classes: :class:`Method` and :class:`Dataset`.

A method file in ``methods/`` defines one subclass of :class:`Method`; a dataset file in
``datasets/`` defines one or more subclasses of :class:`Dataset` (one per dataset of the family).
Both follow scikit-learn's estimator habits: the constructor only stores its arguments (whose
defaults are the paper's values), ``get_params``/``set_params`` come from
:class:`sklearn.base.BaseEstimator`, and a fitted method keeps its learned state in attributes
ending with ``_``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from bench.data import FEATURES, MultiLabelData
from bench.errors import BenchError

#: Constructor arguments that choose *where* a method runs, not *what* it computes; they are
#: left out of a job's identity so that a result obtained on a GPU is reused on a CPU.
EXECUTION_PARAMS = frozenset({"device", "num_workers", "verbose"})
#: Set per job from its seed: they vary within one table row and are not part of its identity.
PER_RUN_PARAMS = frozenset({"random_state"})


#: The methods a method class defines to have its folds trained together (:mod:`bench.stacked`).
STACKED_HOOKS = ("stacked_module", "stacked_inputs", "stacked_update")


def supports_stacking(cls) -> bool:
    """Whether a method class declares the stacked-folds hooks. Here, with the plug-in contract,
    because the plan (:func:`bench.jobs.group_jobs`) asks it without importing torch."""
    return all(callable(getattr(cls, hook, None)) for hook in STACKED_HOOKS)


class NoClassMaps(BenchError):
    """Raised by ``class_maps`` when the fitted model gives no class maps (see :class:`Method`)."""


def ablation_init(full: type, fixed: dict[str, object]):
    """An ``__init__`` for an ablation of the method class ``full`` with the ``fixed`` switches set
    and removed from its hyper-parameters.

    The signature (which scikit-learn's ``get_params`` and the CLI's ``--set`` read) is ``full``'s
    minus the fixed names, so the ablation's job identity and tables list only what a user can change.
    """
    signature = inspect.signature(full.__init__)

    def __init__(self, **params):
        full.__init__(self, **params, **fixed)

    __init__.__signature__ = signature.replace(
        parameters=[p for p in signature.parameters.values() if p.name not in fixed])
    return __init__


class Method(BaseEstimator):
    """A multi-label learner.

    Subclasses set ``name`` (the CLI name), ``accepts`` (the view kinds they can learn from:
    ``"features"`` and/or ``"image"``) and ``citation``, and implement :meth:`fit` and
    :meth:`predict_scores`. :meth:`predict` thresholds the scores at ``threshold``; a method whose
    paper decides label sets differently (beam search, a learned stop) overrides it.

    :meth:`predict_scores` returns float64 [n, L] in [0, 1]; :meth:`predict` uint8 {0, 1} [n, L].

    Hyper-parameters that mean the same thing have the same name in every method: ``epochs``,
    ``batch_size``, ``lr``, ``patience`` (early stopping, None: off), ``monitor`` (the validation
    key it watches), ``val_fraction`` (the part of the training fold held out for validation),
    ``amp`` (mixed precision on GPUs); dataset-scale defaults and ``--set`` rely on it.

    Optional conventions the harness uses when present:

    * ``_check_params()`` raises a one-line error for an invalid hyper-parameter, and
      ``check_data(data, n_train)`` for one that does not suit the dataset (a beam wider than its
      label set, more neighbours than the smallest training part ``n_train`` holds, a file it
      names); :func:`bench.params.validate` runs both once before any job;
    * a ``random_state`` constructor argument is set to the job's seed;
    * a ``device`` constructor argument is set to the worker's device (``"cpu"``, ``"cuda:0"``);
    * ``history_``: a list of per-epoch dicts (``{"epoch": 3, "loss": ..., "val_mAP": ...}``,
      epochs counted from 1 as the papers' convergence figures do, over all training stages;
      numeric values: loss terms by name, validation metrics prefixed ``val_``; the one string
      ``"stage"`` when training has several stages) for convergence plots;
    * ``predict_steps(data)`` -> float array [M, n, L]: the scores after each modality / step,
      for methods whose paper plots a metric against the number of modalities used;
    * ``predict_readouts(data)`` -> ``{name: float64 [n, L] in [0, 1]}``: other named readouts of
      the SAME fitted model (DER's ``first_stream`` and ``second_stream``, RMLC's F^t after the
      first t modalities), for papers that compare readouts of one trained network; each is
      evaluated like the main scores (predictions = scores >= ``threshold``) and becomes a row of
      the method's ablation table, ``<row>:<name>``. Names are short lowercase identifiers; an
      empty dict means none. The main scores stay the method's own row;
    * ``class_maps(data)`` -> float array [n, L, h, w] >= 0: per-label maps on the backbone's grid
      (DER's class-aware maps, attention maps) for the report's map figures; each job stores them
      for its first few test images (``bench.outputs.CLASS_MAP_IMAGES``). A fitted model that has
      none after all (a :class:`~bench.deep.DeepMethod` whose head gives no maps) raises
      :class:`NoClassMaps`, and nothing is stored.

    A registered ablation of another method (e.g. ``rmlc_ns`` of ``rmlc``) sets ``ablation_of`` to
    that method's name, so the report can put the paper's ablations side by side; its constructor
    is usually :func:`ablation_init` of the full method.
    """

    name: ClassVar[str] = ""
    accepts: ClassVar[frozenset[str]] = frozenset({FEATURES})
    citation: ClassVar[str] = ""
    threshold: ClassVar[float] = 0.5
    ablation_of: ClassVar[str] = ""

    def fit(self, train: MultiLabelData, val: MultiLabelData | None = None) -> Method:
        raise NotImplementedError

    def predict_scores(self, data: MultiLabelData) -> np.ndarray:
        """Per-label confidences in [0, 1], float array [n, L]."""
        raise NotImplementedError

    def predict(self, data: MultiLabelData) -> np.ndarray:
        """The predicted label sets, {0,1} array [n, L]."""
        return (self.predict_scores(data) >= self.threshold).astype(np.uint8)

    @classmethod
    def check_compatible(cls, data: MultiLabelData) -> None:
        """Raise a one-line error when this method cannot learn from the dataset's views."""
        if not cls.accepts & data.view_kinds:
            raise BenchError(
                f"method {cls.name!r} needs a view of kind {' or '.join(sorted(cls.accepts))}; "
                f"dataset {data.name!r} has kind(s) {', '.join(sorted(data.view_kinds))}"
            )


class Dataset:
    """A dataset plug-in: knows where its files live and how to read them.

    Subclasses set ``name``, ``protocol`` (``"kfold"``, ``"official"`` or ``"holdout"``, the
    papers' protocol for this dataset), ``citation`` and ``description``, and implement
    :meth:`load`. Datasets whose files must be provided by the user override :meth:`is_available`.
    These class attributes are plain values (literals, constants), so that the plug-in registry
    can read them from the file without importing it (:mod:`bench.plugins`).
    """

    name: ClassVar[str] = ""
    protocol: ClassVar[str] = "kfold"
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True for datasets built from data a dependency ships (always available offline).
    embedded: ClassVar[bool] = False
    #: The metric columns of its papers' tables: a key of ``bench.metrics.METRIC_SETS``.
    metric_set: ClassVar[str] = "all"
    #: The hyper-parameters its scale calls for (``{"backbone": "small-cnn", "epochs": 20}``; keys
    #: ``name`` or ``method.name`` as in ``--set``): applied to a method only for parameters it has
    #: and the user did not ``--set``; ``bench run --paper-defaults`` leaves them out (bench.params).
    scale_defaults: ClassVar[dict] = {}
    #: True when its papers print a per-class AP table (DER Table II on Pascal VOC): the report
    #: then builds one (classes as columns, then mAP).
    per_class_table: ClassVar[bool] = False

    def load(self, data_root: Path) -> MultiLabelData:
        raise NotImplementedError

    def is_available(self, data_root: Path) -> bool:
        return self.embedded
