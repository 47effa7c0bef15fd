"""The method conformance suite: every method in ``methods/`` (a new file is included automatically)
against the plug-in contract of ``bench.api.Method`` and, for deep methods, ``bench.deep.DeepMethod``.

In the spirit of scikit-learn's ``parametrize_with_checks`` and ``benchopt test``: the constructor
only stores; ``get_params``/``clone`` round-trip; the class attributes a registry reads are plain
literals; fit and predict work on a tiny dataset of each view kind the method accepts, with scores
in [0, 1] of shape [n, L] and dtype float64, 0/1 uint8 predictions, well-formed readouts, steps and
class maps; the same seed gives identical results on the CPU; ``history_`` has the documented form;
a label without a positive training example is handled; the common hyper-parameter names are used.

To keep it fast the suite sets, where a method has them, the common names to a tiny schedule
(:data:`TINY`, built on ``bench run --smoke``'s schedule); a method needs nothing else to be checked.
"""

from __future__ import annotations

import ast
import inspect
import math
import re
import sys

import numpy as np
import pytest
from sklearn.base import clone

from bench import plugins
from bench.data import FEATURES, IMAGE, VIEW_KINDS, ImageView, MultiLabelData
from bench.deep import COMMON_PARAMS, DeepMethod
from bench.errors import BenchError
from bench.params import SMOKE_SCHEDULE

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = list(plugins.load("methods"))  # collected from the checkout's methods/ folder
plugins.load.cache_clear()

#: Tiny settings for the parameters a method has (the names every method shares): `bench run
#: --smoke`'s schedule with two epochs (so ``history_`` has more than one entry), a tiny network on the CPU.
TINY = {**SMOKE_SCHEDULE, "epochs": 2, "batch_size": 8, "hidden": 8, "backbone": "small-cnn",
        "pretrained": False, "image_size": None, "resize": None, "num_workers": 0, "device": "cpu",
        "max_iter": 200}
#: Names other code bases use for the concepts of COMMON_PARAMS; none may appear in a method.
ALIASES = {"max_epochs", "n_epochs", "num_epochs", "epochs_max", "learning_rate", "lr_rate", "bs", "batch",
           "early_stopping", "early_stop", "validation_fraction", "val_split", "valid_fraction",
           "use_amp", "mixed_precision", "fp16", "bf16", "metric", "monitor_metric"}
READOUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def tiny(cls, **extra):
    params = cls().get_params(deep=False)
    return cls(**{**{k: v for k, v in TINY.items() if k in params}, **extra})


def dataset(kind: str, n: int = 40, empty_label: bool = False) -> MultiLabelData:
    """A tiny dataset of one view kind: three feature views, or one 16 x 16 image view; 4 labels."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(n, 4))
    Y = (base + 0.5 * rng.normal(size=base.shape) > 0).astype(np.uint8)
    if empty_label:
        Y[:, 2] = 0
    if kind == FEATURES:
        views = {"a": np.c_[base[:, :2], rng.normal(size=(n, 3))], "b": np.c_[base[:, 2:], rng.normal(size=(n, 1))],
                 "c": rng.normal(size=(n, 2))}
        views = {k: v.astype(np.float32) for k, v in views.items()}
    else:
        pix = rng.integers(0, 80, (n, 16, 16)).astype(np.uint8)
        for label, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
            pix[Y[:, label] == 1, r:r + 8, c:c + 8] += 150
        views = {"image": ImageView(array=pix)}
    return MultiLabelData(f"tiny-{kind}", views, Y, ("l0", "l1", "l2", "l3"))


def kinds(name: str) -> list[str]:
    return sorted(plugins.get("methods", name).accepts)


def fit_predict(cls, kind: str, **extra):
    data = dataset(kind)
    train, test = data.subset(np.arange(32)), data.subset(np.arange(32, 40))
    method = tiny(cls, **extra).fit(train)
    return method, test


# ----------------------------------------------------------------------------- construction
@pytest.mark.parametrize("name", METHODS)
def test_constructor_only_stores_its_arguments(name):
    cls = plugins.get("methods", name)
    method = cls()
    params = method.get_params(deep=False)
    signature = inspect.signature(cls.__init__)
    defaults = {p.name: p.default for p in signature.parameters.values() if p.name != "self"}
    assert params == defaults, "get_params must give the constructor's defaults"
    stored = set(params)
    if cls.ablation_of:  # an ablation stores the full method's arguments, its fixed switches included
        full = plugins.get("methods", cls.ablation_of)
        stored = set(full().get_params(deep=False))
        assert set(params) < stored
    assert set(vars(method)) == stored, f"the constructor set more than its arguments: {set(vars(method)) - stored}"
    assert not any(k.endswith("_") for k in vars(method))


@pytest.mark.parametrize("name", METHODS)
def test_get_params_clone_and_set_params_round_trip(name):
    cls = plugins.get("methods", name)
    method = tiny(cls)
    twin = clone(method)
    assert twin is not method and twin.get_params(deep=False) == method.get_params(deep=False)
    twin.set_params(**cls().get_params(deep=False))
    assert twin.get_params(deep=False) == cls().get_params(deep=False)


@pytest.mark.parametrize("name", METHODS)
def test_class_attributes_are_plain_literals_a_registry_can_read(name):
    cls = plugins.get("methods", name)
    assert isinstance(cls.name, str) and cls.name == name
    assert isinstance(cls.citation, str) and cls.citation
    assert isinstance(cls.accepts, frozenset) and cls.accepts and cls.accepts <= set(VIEW_KINDS)
    assert cls.ablation_of == "" or cls.ablation_of in METHODS
    # Read without importing: each of the four attributes the class body assigns is a literal
    # (``accepts`` as ``frozenset({FEATURES})`` / ``frozenset({IMAGE, FEATURES})``).
    tree = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
    (body,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == cls.__name__]
    for node in body.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        attr = node.targets[0].id
        if attr in ("name", "citation", "ablation_of"):
            assert isinstance(ast.literal_eval(node.value), str), f"{attr} must be a string literal"
        elif attr == "accepts":
            value = node.value
            assert (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "frozenset"
                    and len(value.args) == 1 and isinstance(value.args[0], ast.Set)
                    and all(isinstance(e, ast.Name) and e.id in ("FEATURES", "IMAGE") for e in value.args[0].elts)), \
                "accepts must be frozenset({FEATURES}) / frozenset({IMAGE, FEATURES})"


@pytest.mark.parametrize("name", METHODS)
def test_common_hyper_parameter_names(name):
    cls = plugins.get("methods", name)
    params = set(cls().get_params(deep=False))
    assert not params & ALIASES, f"use the common names {COMMON_PARAMS}, not {params & ALIASES}"
    if issubclass(cls, DeepMethod):
        assert set(COMMON_PARAMS) <= params, f"a deep method has all of {COMMON_PARAMS}: missing {set(COMMON_PARAMS) - params}"
        assert {"device", "random_state"} <= params


# ----------------------------------------------------------------------------- fit and predict
def check_scores(scores, shape):
    assert isinstance(scores, np.ndarray) and scores.shape == shape and scores.dtype == np.float64
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()


@pytest.mark.parametrize("name, kind", [(m, k) for m in METHODS for k in kinds(m)])
def test_fit_and_predict_on_each_view_kind_it_accepts(name, kind):
    cls = plugins.get("methods", name)
    method, test = fit_predict(cls, kind)
    shape = test.Y.shape
    check_scores(method.predict_scores(test), shape)
    labels = method.predict(test)
    assert labels.shape == shape and labels.dtype == np.uint8 and np.isin(labels, (0, 1)).all()
    if hasattr(method, "predict_readouts"):
        readouts = method.predict_readouts(test)
        assert isinstance(readouts, dict)
        for key, values in readouts.items():
            assert READOUT_NAME.match(key), f"readout name {key!r}: short lowercase identifiers"
            check_scores(values, shape)
    if hasattr(method, "predict_steps"):
        steps = np.asarray(method.predict_steps(test))
        assert steps.ndim == 3 and steps.shape[0] >= 1 and steps.shape[1:] == shape
        assert np.isfinite(steps).all() and (steps >= 0).all() and (steps <= 1).all()
    if isinstance(method, DeepMethod) and kind == IMAGE:
        try:
            maps = method.class_maps(test)
        except BenchError as exc:
            assert "no 'class_maps'" in str(exc)
        else:
            assert maps.shape == (shape[0], shape[1], *method.encoder_.grid) and (maps >= 0).all()


@pytest.mark.parametrize("name, kind", [(m, k) for m in METHODS for k in kinds(m)])
def test_the_same_seed_gives_identical_results_on_the_cpu(name, kind):
    cls = plugins.get("methods", name)
    first, test = fit_predict(cls, kind)
    second, _ = fit_predict(cls, kind)
    np.testing.assert_array_equal(first.predict_scores(test), second.predict_scores(test))
    np.testing.assert_array_equal(first.predict(test), second.predict(test))


@pytest.mark.parametrize("name", METHODS)
def test_history_has_the_documented_form(name):
    cls = plugins.get("methods", name)
    method, _ = fit_predict(cls, kinds(name)[0])
    history = getattr(method, "history_", None)
    if history is None:
        pytest.skip(f"{name} records no history")
    assert isinstance(history, list) and history
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    for record in history:
        for key, value in record.items():
            assert isinstance(key, str)
            if key == "stage":
                assert isinstance(value, str)
            elif key != "epoch":
                assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
                assert not math.isinf(value), key
    if isinstance(method, DeepMethod):
        assert {"loss", "lr", "time_s"} <= set(history[0])


@pytest.mark.parametrize("name, kind", [(m, k) for m in METHODS for k in kinds(m)])
def test_a_label_without_positive_training_examples(name, kind):
    cls = plugins.get("methods", name)
    data = dataset(kind, empty_label=True)
    method = tiny(cls).fit(data.subset(np.arange(32)))
    scores = method.predict_scores(data.subset(np.arange(32, 40)))
    check_scores(scores, (8, 4))


def test_the_suite_sees_every_method_file():
    files = {p.stem for p in (plugins.project_root() / "methods").glob("*.py") if not p.name.startswith("_")}
    modules = {plugins.get("methods", m).__module__.rsplit(".", 1)[-1] for m in METHODS}
    assert files == modules and {"br", "der", "rmlc"} <= files
