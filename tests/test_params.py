"""Hyper-parameters: parsing ``--set``, resolution with dataset-scale defaults, validation up front."""

from __future__ import annotations

import sys
import textwrap
import types
import typing
from numbers import Real

import pytest
from sklearn.utils._param_validation import Interval

from bench import params, plugins, runner
from bench.api import Method
from bench.cli import main
from bench.errors import BenchError
from bench.store import ResultStore


class Typed(Method):
    """Every annotation shape the checks know, and a validation hook of its own."""

    name = "typed"

    def __init__(self, rate: float = 0.1, layers: int = 2, flag: bool = True, size: int | None = None,
                 mode: str = "fast", pair: tuple[int, int] = (1, 2), weights: bool | str = True, free=None):
        self.rate, self.layers, self.flag, self.size = rate, layers, flag, size
        self.mode, self.pair, self.weights, self.free = mode, pair, weights, free

    def _check_params(self):
        if self.mode not in ("fast", "slow"):
            raise BenchError(f"method {self.name!r}: mode must be 'fast' or 'slow', got {self.mode!r}")


def test_values_parse_as_literals_or_words():
    assert params.parse_overrides(["lr=0.01", "n=3", "pretrained=False", "name=resnet", "t=(1, 2)", "x=none",
                                   "y=TRUE", "s='quoted'"]) == {
        "lr": 0.01, "n": 3, "pretrained": False, "name": "resnet", "t": (1, 2), "x": None, "y": True, "s": "quoted"}


@pytest.mark.parametrize("key, value, expected", [
    ("rate", 1, 1.0), ("rate", 0.5, 0.5), ("layers", 3, 3), ("flag", False, False), ("size", None, None),
    ("size", 7, 7), ("mode", "slow", "slow"), ("pair", (3, 4), (3, 4)), ("weights", "imagenet", "imagenet"),
    ("weights", False, False), ("free", "anything", "anything"),
])
def test_values_that_fit_the_annotation_are_kept(key, value, expected):
    resolved = params.resolve(Typed, {key: value})
    assert resolved.params[key] == expected and type(resolved.params[key]) is type(expected)


@pytest.mark.parametrize("key, value, message", [
    ("rate", "abc", "--set rate='abc': method 'typed' expects rate: float, got the string 'abc'"),
    ("rate", True, "expects rate: float, got the boolean True"),
    ("layers", 2.5, "expects layers: int, got float 2.5"),
    ("layers", True, "expects layers: int, got the boolean True"),
    ("flag", 1, "expects flag: bool, got int 1"),
    ("size", "big", "expects size: int | None, got the string 'big'"),
    ("pair", 3, "expects pair: tuple[int, int], got int 3"),
    ("weights", 1.5, "expects weights: bool | str, got float 1.5"),
])
def test_values_against_the_annotation_are_refused(key, value, message):
    with pytest.raises(BenchError) as err:
        params.resolve(Typed, {key: value})
    assert message in str(err.value)


def test_an_override_equal_to_the_default_is_no_override():
    assert params.resolve(Typed, {"rate": 0.1, "layers": 2}).overrides == {}
    assert params.resolve(Typed, {"typed.rate": 0.2}).overrides == {"rate": 0.2}
    # Likewise a dataset-scale setting that is the default already: no scale default, the same job.
    assert params.resolve(Typed, {}, {"rate": 0.1, "layers": 3}).scale_defaults == {"layers": 3}


def test_a_given_value_wins_over_the_scale_setting_even_when_it_is_the_class_default():
    # The scale says layers=4; the user asks for the class default 2: it runs 2, and the row says so.
    resolved = params.resolve(Typed, {"layers": 2}, {"layers": 4, "rate": 0.3})
    assert resolved.params["layers"] == 2
    assert resolved.overrides == {"layers": 2}
    assert resolved.scale_defaults == {"rate": 0.3}
    # Equal to the scale setting: the same job as without --set (the scale setting, no override).
    resolved = params.resolve(Typed, {"layers": 4}, {"layers": 4})
    assert (resolved.params["layers"], resolved.overrides, resolved.scale_defaults) == (4, {}, {"layers": 4})


class TypedAblation(Typed):
    name = "typed_small"
    ablation_of = "typed"


def test_scale_settings_scoped_to_a_family_reach_its_ablations_and_the_own_scope_wins():
    scale = {"layers": 3, "typed.layers": 5, "typed.rate": 0.2, "typed_small.rate": 0.4}
    assert params.resolve(Typed, {}, scale).params["layers"] == 5
    ablation = params.resolve(TypedAblation, {}, scale)
    assert (ablation.params["layers"], ablation.params["rate"]) == (5, 0.4)
    # --set keeps its exact scope: `typed.rate` is not given to the ablation.
    assert params.resolve(TypedAblation, {"typed.rate": 0.9}).params["rate"] == 0.1


def test_scale_defaults_fill_only_what_the_method_has_and_the_user_did_not_set():
    scale = {"rate": 0.3, "layers": 4, "epochs": 10, "other.mode": "slow", "typed.mode": "slow"}
    resolved = params.resolve(Typed, {"layers": 8}, scale)
    assert resolved.overrides == {"layers": 8}
    assert resolved.scale_defaults == {"rate": 0.3, "mode": "slow"}  # not `epochs`, not `other.`'s
    assert resolved.params == {**params.defaults(Typed), "rate": 0.3, "mode": "slow", "layers": 8}
    with pytest.raises(BenchError, match="scale default layers='four': method 'typed' expects layers: int"):
        params.resolve(Typed, {}, {"layers": "four"})


def test_the_methods_own_checks_run_on_a_built_instance():
    with pytest.raises(BenchError, match=r"^--set mode='medium': method 'typed': mode must be 'fast' or 'slow'"):
        params.validate(Typed, params.resolve(Typed, {"mode": "medium"}))
    with pytest.raises(BenchError, match=r"dataset 'd' scale defaults mode='x': method 'typed': mode must be"):
        params.validate(Typed, params.resolve(Typed, {}, {"mode": "x"}), "d")
    params.validate(Typed, params.resolve(Typed, {}))  # the defaults pass


# --------------------------------------------------------------------------- through bench run
SCALED_DATASET = '''
from bench.api import Dataset


class Scaled(Dataset):
    name = "scaled"
    embedded = True
    scale_defaults = {"epochs": 3, "br.C": 0.5}

    def load(self, data_root):
        from bench.runner import load_dataset
        from dataclasses import replace

        return replace(load_dataset("tiny", str(data_root)), name="scaled")
'''

EPOCH_METHOD = '''
import numpy as np
from bench.api import Method


class Epochs(Method):
    name = "epochs"

    def __init__(self, epochs: int = 50, lr: float = 0.1):
        self.epochs, self.lr = epochs, lr

    def fit(self, train, val=None):
        self.prior_ = train.Y.mean(axis=0)
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))
'''


@pytest.fixture
def scaled(isolated):
    (isolated / "datasets" / "scaled.py").write_text(textwrap.dedent(SCALED_DATASET))
    (isolated / "methods" / "epochs.py").write_text(textwrap.dedent(EPOCH_METHOD))
    plugins.load.cache_clear()
    return isolated


def stored(tmp_path, method):
    return list(ResultStore(tmp_path / "results").records("scaled", method))


def test_scale_defaults_are_part_of_the_job_and_paper_defaults_leave_them_out(scaled, tmp_path, capsys):
    argv = ["run", "--method", "epochs,br", "--dataset", "scaled", "--folds", "2", "--no-progress"]
    assert main(argv) == 0
    records = stored(tmp_path, "epochs")
    assert len(records) == 2
    for rec in records:
        assert rec["config"]["params"]["epochs"] == 3 and rec["config"]["scale_defaults"] == {"epochs": 3}
        assert rec["overrides"] == {} and rec["paper_defaults"] is False
    assert all(r["config"]["params"]["C"] == 0.5 for r in stored(tmp_path, "br"))

    assert main(argv + ["--paper-defaults"]) == 0
    assert "4 job(s) run, 0 already in" in capsys.readouterr().out  # other jobs: other parameters
    paper = [r for r in stored(tmp_path, "epochs") if r["paper_defaults"]]
    assert len(paper) == 2 and all(r["config"]["params"]["epochs"] == 50 and "scale_defaults" not in r["config"]
                                   for r in paper)

    assert main(argv + ["--set", "epochs=7"]) == 0  # --set wins over the dataset's setting
    capsys.readouterr()
    assert {r["config"]["params"]["epochs"] for r in stored(tmp_path, "epochs")} == {3, 50, 7}


def test_stored_runs_are_current_under_the_defaults_they_ran_with(scaled, tmp_path):
    from bench.records import Record
    from bench.results import stale_keys as record_stale_keys

    def stale_keys(raw: dict) -> list[str]:  # the results layer's check, on the record as stored
        return record_stale_keys(Record.from_dict(raw))

    assert main(["run", "--method", "epochs", "--dataset", "scaled", "--folds", "2", "--no-progress"]) == 0
    assert main(["run", "--method", "epochs", "--dataset", "scaled", "--folds", "2", "--no-progress",
                 "--paper-defaults"]) == 0
    records = stored(tmp_path, "epochs")
    assert len(records) == 4 and all(stale_keys(r) == [] for r in records)
    # The dataset's setting changes: the runs made with the old one are stale, the paper ones not.
    path = scaled / "datasets" / "scaled.py"
    path.write_text(path.read_text().replace('"epochs": 3', '"epochs": 4'))
    plugins.load.cache_clear()
    runner.load_dataset.cache_clear()
    assert sorted(tuple(stale_keys(r)) for r in stored(tmp_path, "epochs")) == [(), (), ("epochs",), ("epochs",)]


def test_job_ids_of_runs_without_scale_defaults_are_unchanged(tmp_path):
    """Jobs that no scale default touches keep the ids the code before bench.params gave them (taken
    from commit b1a1eee), so stores made then are reused, not run again."""
    def ids(overrides):
        return [j.job_id for j in runner.build_jobs(["br"], ["tiny"], protocol=None, n_folds=2, seeds=None,
                                                   overrides=overrides, data_root=tmp_path, store_root=tmp_path)]

    assert ids({}) == ["bb2bcb4a4717b04d", "cda68395678f38e2"]
    assert ids({"C": 0.5}) == ["549144b02b8264e6", "315468f9d6a0ce05"]
    assert ids({"C": 1}) == ids({})  # an int for the float default 1.0: the same job


# ----------------------------------------------------------------------------- exact messages
class Checked(Method):
    """Annotations the first tests leave out (Any, object, Literal, an optional float)."""

    name = "checked"

    def __init__(self, rate: float | None = None, mode: typing.Literal["sum", "mean"] = "sum",
                 anything: typing.Any = 0, obj: object = 0):
        self.rate, self.mode, self.anything, self.obj = rate, mode, anything, obj

    def _check_params(self):
        if self.rate is not None and self.rate < 0:
            raise ValueError("rate must be >= 0")


def test_a_failed_check_names_every_value_it_was_given_and_where_each_came_from():
    resolved = params.resolve(Checked, {"rate": -1, "mode": "mean"}, {"anything": 5, "obj": 7})
    assert resolved.params["rate"] == -1.0 and type(resolved.params["rate"]) is float  # an int for float | None
    with pytest.raises(BenchError) as err:
        params.validate(Checked, resolved, "toy")
    assert str(err.value) == ("--set rate=-1.0 mode='mean'; dataset 'toy' scale defaults anything=5 obj=7: "
                              "method 'checked': rate must be >= 0")


def test_a_failed_check_of_values_nobody_set_is_the_methods_message_alone():
    resolved = params.Resolved({**params.defaults(Checked), "rate": -2.0}, {}, {})
    with pytest.raises(BenchError) as err:
        params.validate(Checked, resolved)
    assert str(err.value) == "method 'checked': rate must be >= 0"


def test_any_and_object_take_every_value():
    kept = params.resolve(Checked, {"anything": "text", "obj": [1, 2]}).params
    assert kept["anything"] == "text" and kept["obj"] == [1, 2]


@pytest.mark.parametrize("key, value, message", [
    ("mode", "max", "--set mode='max': method 'checked' expects mode: Literal['sum', 'mean'], got the string 'max'"),
    ("rate", "fast", "--set rate='fast': method 'checked' expects rate: float | None, got the string 'fast'"),
])
def test_refusals_are_exactly_one_line(key, value, message):
    with pytest.raises(BenchError) as err:
        params.resolve(Checked, {key: value})
    assert str(err.value) == message


def test_a_none_for_a_float_is_named_as_none():
    with pytest.raises(BenchError) as err:
        params.resolve(Typed, {"rate": None})
    assert str(err.value) == "--set rate=None: method 'typed' expects rate: float, got None"


def test_a_value_may_hold_equals_signs_and_bad_pairs_are_named():
    assert params.parse_overrides(["name=a=b"]) == {"name": "a=b"}
    for pair in ("lr", "=3"):
        with pytest.raises(BenchError) as err:
            params.parse_overrides([pair])
        assert str(err.value) == f"--set expects key=value, got {pair!r}"
    with pytest.raises(BenchError) as err:
        params.parse_overrides(["lr=1", "lr=2"])
    assert str(err.value) == "--set lr is given twice"


Choice = typing.Literal["a", "b"]     # a name only this module defines
Seed = typing.NewType("Seed", int)    # neither a class nor a generic


class Shapes(Method):
    """Annotations naming this module's own types, generics and special forms."""

    name = "shapes"

    def __init__(self, pick: Choice = "a", opts: dict[str, int] | None = None, seed: Seed = Seed(0),
                 depth: typing.Annotated[int, "layers"] = 1, scale: typing.Annotated[float, "x"] = 1.0):
        self.pick, self.opts, self.seed, self.depth, self.scale = pick, opts, seed, depth, scale


# A plug-in whose class inherits its signature from a class of another module: the annotation
# must be read in the namespace of the module that wrote it.
_other = types.ModuleType("other_plugin_module")
sys.modules[_other.__name__] = _other
Inherited = type("Inherited", (Shapes,), {"__module__": _other.__name__, "name": "inherited"})
# ... or from a module no longer loaded (a class made at run time, a removed plug-in file).
Unloaded = type("Unloaded", (Shapes,), {"__module__": "no_such_module_loaded", "name": "unloaded"})


@pytest.mark.parametrize("cls", [Shapes, Inherited, Unloaded])
def test_annotations_are_read_in_the_module_that_wrote_them(cls):
    with pytest.raises(BenchError) as err:
        params.resolve(cls, {"pick": "c"})
    assert str(err.value) == f"--set pick='c': method {cls.name!r} expects pick: Literal['a', 'b'], got the string 'c'"
    assert params.resolve(cls, {"pick": "b"}).params["pick"] == "b"


def test_generic_and_special_annotations():
    kept = params.resolve(Shapes, {"opts": {"x": 1}, "seed": 5, "depth": 3, "scale": 2}).params
    assert (kept["opts"], kept["seed"], kept["depth"], kept["scale"]) == ({"x": 1}, 5, 3, 2.0)
    assert type(kept["scale"]) is float  # Annotated[float, ...] is a float: an int becomes one
    with pytest.raises(BenchError) as err:
        params.resolve(Shapes, {"scale": "abc"})
    assert str(err.value) == ("--set scale='abc': method 'shapes' expects scale: Annotated[float, 'x'], "
                              "got the string 'abc'")
    with pytest.raises(BenchError) as err:
        params.resolve(Shapes, {"opts": 3})
    assert str(err.value) == "--set opts=3: method 'shapes' expects opts: dict[str, int] | None, got int 3"


def test_resolve_params_is_resolve_as_a_pair():
    assert params.resolve_params(Typed, {"rate": 0.2}, {"layers": 3}) == (
        {**params.defaults(Typed), "rate": 0.2, "layers": 3}, {"rate": 0.2})


@pytest.mark.parametrize("key, message", [
    ("other.rate", "--set other.rate: method 'other' is not among the selected (typed, checked)"),
    ("typed.nope", "--set typed.nope: method 'typed' has no hyper-parameter 'nope'; it has: flag, free, layers, "
                   "mode, pair, rate, size, weights"),
    ("nope", "--set nope: no selected method has a hyper-parameter 'nope'; known: anything, flag, free, layers, "
             "mode, obj, pair, rate, size, weights"),
])
def test_unknown_keys_are_refused_naming_what_is_known(key, message):
    params.check_override_keys({"rate": 1.0, "checked.mode": "mean"}, [Typed, Checked])  # known: accepted
    with pytest.raises(BenchError) as err:
        params.check_override_keys({key: 1}, [Typed, Checked])
    assert str(err.value) == message


class Constrained(Method):
    """A method that declares scikit-learn's parameter constraints."""

    name = "constrained"
    _parameter_constraints = {"C": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, C: float = 1.0):
        self.C = C


def test_scikit_learn_parameter_constraints_are_checked_up_front():
    params.validate(Constrained, params.resolve(Constrained, {"C": 2}))
    with pytest.raises(BenchError) as err:
        params.validate(Constrained, params.resolve(Constrained, {"C": -1}))
    assert str(err.value).startswith("--set C=-1.0: method 'constrained': The 'C' parameter of Constrained must be")


def test_a_check_that_fails_without_a_message_is_named_by_its_exception():
    class Silent(Checked):
        name = "silent"

        def _check_params(self):
            raise ValueError()

    with pytest.raises(BenchError) as err:
        params.validate(Silent, params.resolve(Silent, {}))
    assert str(err.value) == "method 'silent': ValueError"
