"""``--set``: a scoped value reaches the one method it names, never its ablations nor the others.

The methods here are written for the test (a constant-prior learner with a hyper-parameter ``k``
and an ablation of it built the way RMLC_NS and DER's variants are), so the expectations are
literal values, not the code's own constants. What is checked is what is stored: the resolved
hyper-parameters in each job's record, and the overrides its table row is named by.
"""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.store import ResultStore

METHODS = '''
import numpy as np
from bench.api import Method, ablation_init


class Alpha(Method):
    name = "alpha"

    def __init__(self, k: int = 1, shared: float = 0.5):
        self.k = k
        self.shared = shared

    def fit(self, train, val=None):
        self.prior_ = train.Y.mean(axis=0)
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))


class AlphaLite(Alpha):
    name = "alpha_lite"
    ablation_of = "alpha"
    __init__ = ablation_init(Alpha, {"shared": 0.0})


class Beta(Alpha):
    name = "beta"

    def __init__(self, k: int = 1):
        self.k = k
'''


@pytest.fixture
def three_methods(isolated):
    (isolated / "methods" / "scoping.py").write_text(METHODS)


def stored_params(tmp_path):
    """{method: [(resolved k, overrides) of each stored job]}"""
    out = {}
    for rec in ResultStore(tmp_path / "results").records("tiny"):
        out.setdefault(rec["config"]["method"], []).append((rec["config"]["params"]["k"], rec["overrides"]))
    return out


def run(*sets):
    argv = ["run", "--method", "alpha,alpha_lite,beta", "--dataset", "tiny", "--folds", "2", "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    return main(argv)


def test_a_scoped_value_reaches_only_the_method_it_names(three_methods, tmp_path):
    assert run("alpha.k=5") == 0
    assert stored_params(tmp_path) == {
        "alpha": [(5, {"k": 5})] * 2,
        "alpha_lite": [(1, {})] * 2,    # the ablation keeps its default
        "beta": [(1, {})] * 2,
    }


def test_two_scoped_values_each_reach_their_own_method(three_methods, tmp_path):
    assert run("alpha_lite.k=3", "beta.k=4") == 0
    assert stored_params(tmp_path) == {
        "alpha": [(1, {})] * 2, "alpha_lite": [(3, {"k": 3})] * 2, "beta": [(4, {"k": 4})] * 2}


def test_an_unscoped_value_reaches_every_method_that_has_the_parameter(three_methods, tmp_path):
    assert run("k=7") == 0
    assert stored_params(tmp_path) == {m: [(7, {"k": 7})] * 2 for m in ("alpha", "alpha_lite", "beta")}


@pytest.mark.parametrize("order", [("k=7", "beta.k=2"), ("beta.k=2", "k=7")])
def test_a_scoped_value_wins_over_an_unscoped_one_for_its_method(three_methods, tmp_path, order):
    assert run(*order) == 0
    params = stored_params(tmp_path)
    assert params["beta"] == [(2, {"k": 2})] * 2
    assert params["alpha"] == params["alpha_lite"] == [(7, {"k": 7})] * 2


def test_a_value_scoped_to_a_parameter_the_ablation_fixed_is_refused(three_methods, capsys):
    # alpha_lite fixes `shared`; setting it there would silently do nothing.
    assert run("alpha_lite.shared=0.3") == 2
    err = capsys.readouterr().err
    assert "alpha_lite" in err and "shared" in err and err.count("\n") == 1
