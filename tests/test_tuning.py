"""In-fold selection (bench/tuning.py, `bench run --tune`): the choice is made on the training part's
validation carve-out only (a signal planted in the test fold alone is ignored), candidate scores
match an independent computation, bad grids are one-line errors before any job, the search is the
row and the table footnotes the choice per fold, and it works for br and rmlc."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from bench import cli, plugins, runner, tuning
from bench.data import MultiLabelData
from bench.protocols import make_splits, validation_split

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A method whose only hyper-parameter picks which block of a feature view it returns as its scores.
PICK_METHOD = '''
import numpy as np
from bench.api import Method


class Pick(Method):
    name = "pick"
    citation = "test"

    def __init__(self, column: int = 0, unused: float = 0.0, random_state: int = 0):
        self.column = column
        self.unused = unused
        self.random_state = random_state

    def fit(self, train, val=None):
        self.fitted_on_ = int(train.n_samples)
        return self

    def predict_scores(self, data):
        L = data.n_labels
        return np.asarray(data.views["a"][:, self.column * L:(self.column + 1) * L], dtype=np.float64)
'''

# A dataset read from an .npz the test writes (its path is filled in).
PLANTED_DATASET = '''
import numpy as np
from bench.api import Dataset
from bench.data import MultiLabelData


class Planted(Dataset):
    name = "planted"
    protocol = "kfold"
    embedded = True

    def load(self, data_root):
        z = np.load({path!r})
        return MultiLabelData("planted", {{"a": z["a"]}}, z["Y"], ("l0", "l1", "l2"))
'''


def planted(isolated: Path, tmp_path: Path) -> tuple[MultiLabelData, object]:
    """Block 0 of the view: the labels with 25 % of the entries flipped, everywhere; block 1: the
    labels exactly on fold 0's *test* examples and noise elsewhere. Selection on the test fold would
    take block 1 (perfect there); on the training part's carve-out, block 1 is noise."""
    rng = np.random.default_rng(0)
    Y = (rng.random((200, 3)) < 0.4).astype(np.uint8)
    Y[np.arange(3), np.arange(3)] = 1
    flip = rng.random(Y.shape) < 0.25
    block0 = np.where(flip, 1 - Y, Y) * 0.6 + 0.2 + 0.1 * rng.random(Y.shape)
    data = MultiLabelData("planted", {"a": np.zeros((200, 6), np.float32)}, Y, ("l0", "l1", "l2"))
    split = make_splits(data, "kfold", 2, (0,))[0]
    block1 = rng.random(Y.shape)
    block1[split.test] = Y[split.test]
    np.savez(tmp_path / "planted.npz", a=np.c_[block0, block1].astype(np.float32), Y=Y)
    (isolated / "datasets" / "planted.py").write_text(
        textwrap.dedent(PLANTED_DATASET.format(path=str(tmp_path / "planted.npz"))))
    (isolated / "methods" / "pick.py").write_text(textwrap.dedent(PICK_METHOD))
    plugins.load.cache_clear()
    runner.load_dataset.cache_clear()
    return runner.load_dataset("planted", ""), split


def mean_ap(Y, scores) -> float:
    return float(np.mean([average_precision_score(Y[:, j], scores[:, j]) for j in range(Y.shape[1])]))


def test_the_choice_ignores_a_signal_planted_in_the_test_fold_only(tmp_path, isolated):
    data, split = planted(isolated, tmp_path)
    jobs = runner.build_jobs(["pick"], ["planted"], protocol="kfold", n_folds=2, seeds=(0,), overrides={},
                             data_root=tmp_path, store_root=tmp_path / "results", tune={"column": [1, 0]})
    job = next(j for j in jobs if j.split.fold == 0)
    assert job.config["search"] == {"grid": {"column": [1, 0]}, "metric": "mAP"}
    record, arrays = runner.execute(job, "cpu")
    found = record["search"]
    assert found["chosen"] == {"column": 0}                        # block 1 (first in the grid) loses
    train = data.subset(split.train)                               # the independent reference
    fit_part, val = validation_split(train, tuning.VAL_FRACTION, 0)
    expected = [mean_ap(val.Y, val.views["a"][:, 3:6]), mean_ap(val.Y, val.views["a"][:, 0:3])]
    assert [c["score"] for c in found["candidates"]] == pytest.approx(expected, rel=1e-9)
    assert [c["params"] for c in found["candidates"]] == [{"column": 1}, {"column": 0}]
    assert found["n_fit"] == fit_part.n_samples and found["n_val"] == val.n_samples == 10
    test = data.subset(split.test)                                 # the job's model is the chosen one
    assert record["metrics"]["mAP"] == pytest.approx(mean_ap(test.Y, test.views["a"][:, :3]), rel=1e-9)
    assert mean_ap(test.Y, test.views["a"][:, 3:]) == 1.0          # what a look at the test fold would take
    assert np.array_equal(arrays["scores"], test.views["a"][:, :3])


def test_ties_go_to_the_first_candidate_in_grid_order(tmp_path, isolated):
    planted(isolated, tmp_path)
    cls = plugins.get("methods", "pick")
    train = runner.load_dataset("planted", "").subset(np.arange(100))
    method, found = tuning.fit(cls, {"column": 0, "unused": 0.0, "random_state": 0}, train,
                               {"grid": {"unused": [0.5, 0.25, 0.75]}, "metric": "mAP"})
    assert found["chosen"] == {"unused": 0.5} and method.unused == 0.5
    assert len({c["score"] for c in found["candidates"]}) == 1
    assert method.fitted_on_ == found["n_fit"] == 90               # fitted on the part left after the carve-out


def test_a_method_declares_its_search_and_set_or_tune_change_it():
    retdm = plugins.get("methods", "retdm")
    assert tuning.search_for(retdm, {}, {}) == {"grid": {"alpha": [0.1, 0.01, 0.001]}, "metric": "mAP"}
    assert tuning.search_for(retdm, {}, {"alpha": 1.0}) == {}               # --set alpha=1: the fixed α = 1
    assert tuning.search_for(retdm, {}, {"retdm.alpha": 1.0}) == {}
    assert tuning.search_for(retdm, {"alpha": [1, 0.5]}, {"alpha": 1.0})["grid"] == {"alpha": [1.0, 0.5]}
    both = tuning.search_for(retdm, {"beta": [1.0, 0.0]}, {})
    assert both["grid"] == {"alpha": [0.1, 0.01, 0.001], "beta": [1.0, 0.0]}
    assert tuning.candidates(both["grid"])[:2] == [{"alpha": 0.1, "beta": 1.0}, {"alpha": 0.1, "beta": 0.0}]
    assert tuning.search_for(plugins.get("methods", "retdm_bce"), {}, {}) == {}   # the ablation has no α
    rmlc = plugins.get("methods", "rmlc")
    assert tuning.search_for(rmlc, {"lam": [0.1, 1.0]}, {})["metric"] == "hamming_loss"   # its monitor


def run_cli(*args: str) -> int:
    return cli.main(["run", *args, "--no-mlflow", "--no-progress", "--device", "cpu"])


@pytest.mark.parametrize("tune, message", [
    ("nope=1,2", "--tune nope: no selected method has a tunable hyper-parameter 'nope'"),
    ("C=", "--tune C: the grid is empty"),
    ("C", "--tune expects key=v1,v2"),
    ("C=abc,1", "--tune C='abc': method 'br' expects C: float, got the string 'abc'"),
    ("C=1,1.0", "--tune C: a value is given twice"),
    ("C=-1,1", "search candidate {'C': -1.0} of method 'br'"),
    ("rmlc.C=1,2", "--tune rmlc.C: method 'rmlc' is not among the selected"),
    ("device=cpu,cuda", "no selected method has a tunable hyper-parameter 'device'"),
])
def test_bad_grids_are_one_line_errors_before_any_job(tune, message, capsys, tmp_path):
    code = run_cli("--method", "br", "--dataset", "tiny", "--folds", "2", "--tune", tune)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("bench: error: ") and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert not list((tmp_path / "results").rglob("*.json"))        # no job ran


def stored(tmp_path: Path) -> list[dict]:
    out = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("*.json")]
    return [r for r in out if isinstance(r, dict) and "job_id" in r]


@pytest.mark.parametrize("method, tune", [("br", "C=0.001,1.0"), ("rmlc", "lam=0.0,0.5")])
def test_tune_runs_for_br_and_rmlc_and_the_search_is_one_row_with_a_footnote(method, tune, capsys, tmp_path):
    args = ["--method", method, "--dataset", "tiny", "--folds", "2", "--tune", tune]
    assert run_cli(*args, *(["--smoke"] if method == "rmlc" else [])) == 0
    out = capsys.readouterr().out
    records = [r for r in stored(tmp_path) if r.get("config", {}).get("method") == method]
    assert len(records) == 2
    key, values = tune.split("=")
    grid = [float(v) for v in values.split(",")]
    for record in records:
        found = record["search"]
        assert record["config"]["search"]["grid"] == {key: grid}
        assert [c["params"][key] for c in found["candidates"]] == grid
        assert found["chosen"][key] in grid and found["n_val"] > 0
        assert all(np.isfinite(c["score"]) for c in found["candidates"])
    label = f"{method} (tune {key} in {{{', '.join(map(str, grid))}}} on val "
    assert out.count(label) >= 2                                   # one row (column) and its footnote
    assert "seed 0 fold 0: " in out and "seed 0 fold 1: " in out


def test_mlflow_logs_each_folds_choice_and_its_validation_score(tmp_path, monkeypatch):
    from bench.tracking import Tracker

    monkeypatch.delenv("BENCH_MLFLOW", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert cli.main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--tune", "C=0.001,1.0",
                     "--no-progress", "--device", "cpu"]) == 0
    records = {(r["config"]["fold"]): r["search"] for r in stored(tmp_path)}
    tracker = Tracker.for_results(tmp_path / "results")
    runs = tracker.client.search_runs([tracker.experiment_id], "tags.`bench.kind` = 'job'")
    assert len(runs) == 2
    for run in runs:
        found = records[int(run.data.params["fold"])]
        assert float(run.data.params["search.C"]) == found["chosen"]["C"]
        assert run.data.metrics["search_val_mAP"] == pytest.approx(found["score"])
