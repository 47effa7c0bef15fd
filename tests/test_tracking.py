"""MLflow tracking, read back with MlflowClient: the parent/child tree, aggregates, curves with
steps, artifacts, resume without duplicates, and logging failures that never lose a result.

A new MLflow SQLite store takes seconds to initialise (Alembic migrations), so one scenario builds
a store and a single test reads it back through several checks (one test, so that pytest-xdist
never builds it twice): two methods (``br`` and the plug-in ``curvy`` below, which has
``history_`` and ``predict_steps``) run on the tiny dataset, the command is resumed with a second
seed, a sweep of one hyper-parameter is added, ``bench report`` runs, and syncing and logging the
report again changes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
import textwrap
import time

import numpy as np
import pytest
from conftest import TINY_DATASET

from bench import plugins, runner
from bench import results as results_layer
from bench.cli import main
from bench.records import Record
from bench.report import build_tables
from bench.store import ResultStore
from bench.tracking import Tracker, default_tracking_uri, tracking_enabled

# A method plug-in as a user would write it: per-epoch history with a loss and a validation metric,
# and predict_steps over the tiny dataset's two views (view "a" drives labels 0-1, "b" labels 2-3).
CURVY = '''
import numpy as np
from bench.api import Method


class Curvy(Method):
    name = "curvy"
    citation = "test plug-in"

    def __init__(self, scale: float = 2.0, epochs: int = 4, random_state: int = 0):
        self.scale = scale
        self.epochs = epochs
        self.random_state = random_state

    def fit(self, train, val=None):
        self.history_ = [{"epoch": e, "loss": 1.0 / (e + 1) + self.random_state, "val_mAP": e / 10}
                         for e in range(self.epochs)]
        return self

    def predict_steps(self, data):
        a, b = data.views["a"], data.views["b"]
        half = np.full((data.n_samples, 2), 0.5)
        first = np.c_[1 / (1 + np.exp(-self.scale * a[:, :2])), half]
        second = np.c_[first[:, :2], 1 / (1 + np.exp(-self.scale * b[:, :2]))]
        return np.stack([first, second])

    def predict_scores(self, data):
        return self.predict_steps(data)[-1]
'''

RUN = ["run", "--dataset", "tiny", "--folds", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    (root / "plugins" / "datasets").mkdir(parents=True)
    (root / "plugins" / "methods").mkdir()
    (root / "plugins" / "datasets" / "tiny.py").write_text(textwrap.dedent(TINY_DATASET))
    (root / "plugins" / "methods" / "curvy.py").write_text(textwrap.dedent(CURVY))
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"BENCH_RESULTS": results, "BENCH_REPORTS": root / "reports",
                           "BENCH_DATA_ROOT": root / "data", "BENCH_PLUGIN_PATH": root / "plugins"}.items():
            mp.setenv(key, str(value))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("BENCH_MLFLOW", raising=False)
        plugins.load.cache_clear()
        runner.load_dataset.cache_clear()
        assert main([*RUN, "--method", "br,curvy", "--seeds", "0"]) == 0
        first = _client(results).search_runs([_experiment_id(results)])
        assert main([*RUN, "--method", "br,curvy", "--seeds", "0,1"]) == 0  # resumed: seed 0 is skipped
        for scale in ("1.0", "4.0"):  # a sweep of one hyper-parameter: scale = 1, 2 (default), 4
            assert main([*RUN, "--method", "curvy", "--seeds", "0", "--set", f"scale={scale}"]) == 0
        assert main(["report", "--format", "both"]) == 0
        tracker = Tracker.for_results(results)  # a second report's MLflow part, without redrawing
        again = tracker.sync(results_layer.load(ResultStore(results)))
        tracker.log_report(sorted((root / "reports").glob("*.md")))
        assert not tracker.disabled
        # the whole results folder copied elsewhere (a teammate's copy), then reported there
        moved = root / "copy" / "results"
        shutil.copytree(results, moved)
        copied_at = time.time_ns()
        before = _listing(results / "mlartifacts")
        assert main(["--results", str(moved), "report", "--format", "md", "--out", str(root / "copy" / "reports")]) == 0
        after = _listing(results / "mlartifacts")
        plugins.load.cache_clear()
        runner.load_dataset.cache_clear()
    return {"root": root, "results": results, "store": ResultStore(results), "first": first, "again": again,
            "moved": moved, "copied_at": copied_at, "original_artifacts": (before, after)}


def _listing(folder):
    """Every file under ``folder`` with its modification time."""
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file())


def test_run_resume_report_read_back_with_mlflow_client(tracked):
    assert tracked["again"] == {"jobs_logged": 0, "parents_updated": 0, "legacy_replaced": 0}
    for check in (check_store_is_the_default_sqlite_next_to_results, check_parent_child_tree,
                  check_parent_params_tags_and_aggregates, check_parent_aggregates_are_the_table_cells,
                  check_parent_spans_its_jobs, check_aggregates_follow_the_resume,
                  check_child_metrics_and_curves, check_step_scores_stored_with_the_job,
                  check_tables_and_figures_on_parents_and_leaderboard, check_experiment_kind_and_dataset_inputs,
                  check_a_copied_store_keeps_its_artifacts, check_a_job_is_logged_in_one_batch,
                  check_forced_rerun_replaces_the_child_only_when_its_result_changed):  # last: rewrites a child
        check(tracked)


def _client(results):
    from mlflow import MlflowClient

    return MlflowClient(default_tracking_uri(results))


PARENTS = {"br": "br · tiny@{fp} · kfold3", "curvy": "curvy · tiny@{fp} · kfold3",
           "curvy (scale=1.0)": "curvy (scale=1.0) · tiny@{fp} · kfold3",
           "curvy (scale=4.0)": "curvy (scale=4.0) · tiny@{fp} · kfold3"}


def _name(tracked, row):
    fp = next(tracked["store"].records())["config"]["data_fingerprint"][:8]
    return PARENTS[row].format(fp=fp)


def _experiment_id(results):
    return _client(results).get_experiment_by_name("bench").experiment_id


def _runs(tracked):
    return _client(tracked["results"]).search_runs([_experiment_id(tracked["results"])], max_results=1000)


def _by_kind(runs, kind):
    return [r for r in runs if r.data.tags.get("bench.kind") == kind]


def _parent(runs, row):
    return next(r for r in _by_kind(runs, "parent") if r.data.tags["bench.row"] == row)


def check_experiment_kind_and_dataset_inputs(tracked):
    """The UI opens the experiment on its runs (a model-training kind, not GenAI), and every row's
    and job's run names its dataset and data fingerprint (the runs list's Dataset column)."""
    exp = _client(tracked["results"]).get_experiment_by_name("bench")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    fingerprint = next(tracked["store"].records())["config"]["data_fingerprint"]
    runs = _by_kind(_runs(tracked), "parent") + _by_kind(_runs(tracked), "job")
    assert len(runs) == 4 + 18
    for run in runs:
        (entry,) = run.inputs.dataset_inputs
        assert (entry.dataset.name, entry.dataset.digest) == ("tiny", fingerprint)
        assert [(t.key, t.value) for t in entry.tags] == [("mlflow.data.context", "training")]


def check_store_is_the_default_sqlite_next_to_results(tracked):
    assert (tracked["results"] / "mlflow.db").is_file()
    exp = _client(tracked["results"]).get_experiment_by_name("bench")
    assert exp.artifact_location == (tracked["results"] / "mlartifacts").resolve().as_uri()


def check_parent_child_tree(tracked):
    runs = _runs(tracked)
    records = list(tracked["store"].records())
    jobs = _by_kind(runs, "job")
    assert len(records) == 18  # br 2 seeds x 3 folds, curvy 2 x 3, curvy scale=1 and scale=4 x 3
    assert sorted(r.data.tags["bench.job_id"] for r in jobs) == sorted(r["job_id"] for r in records)
    parents = {p.info.run_id: p.data.tags["mlflow.runName"] for p in _by_kind(runs, "parent")}
    assert sorted(parents.values()) == sorted(_name(tracked, row) for row in PARENTS)
    children_per_parent = {}
    for job in jobs:
        children_per_parent.setdefault(parents[job.data.tags["mlflow.parentRunId"]], []).append(job)
    assert {k: len(v) for k, v in children_per_parent.items()} == {
        _name(tracked, "br"): 6, _name(tracked, "curvy"): 6,
        _name(tracked, "curvy (scale=1.0)"): 3, _name(tracked, "curvy (scale=4.0)"): 3}
    assert len(_by_kind(runs, "leaderboard")) == 1
    assert len(runs) == 18 + 4 + 1  # nothing else, nothing twice (resume, second sync and report)


def check_parent_params_tags_and_aggregates(tracked):
    runs = _runs(tracked)
    parent = _parent(runs, "br")
    records = list(tracked["store"].records("tiny", "br"))
    assert parent.data.params["C"] == "1.0" and "random_state" not in parent.data.params
    tags = parent.data.tags
    assert tags["bench.n_runs"] == "6" and tags["bench.device"] == "cpu"
    assert sorted(tags["bench.split_hashes"].split(",")) == sorted({r["config"]["split_hash"] for r in records})
    assert tags["bench.code_version"] == records[0]["environment"]["code"]
    for metric in ("hamming_loss", "mAP", "micro_f1"):
        values = [r["metrics"][metric] for r in records]
        assert parent.data.metrics[f"{metric}_mean"] == pytest.approx(sum(values) / 6)
        assert parent.data.metrics[f"{metric}_std"] == pytest.approx(np.std(values, ddof=1))
    assert set(parent.data.metrics) >= {f"{m}_mean" for m in records[0]["metrics"]}
    assert tags["bench.data_fingerprint"] == records[0]["config"]["data_fingerprint"]


def check_parent_aggregates_are_the_table_cells(tracked):
    """The parents' mean/std are the results layer's, which the tables print: equal, not close."""
    runs = _runs(tracked)
    tables = build_tables(results_layer.load(tracked["store"]))
    [table] = [t for t in tables if t.dataset == "tiny"]
    assert list(table.mean.index) == list(PARENTS)
    for row in PARENTS:
        metrics = _parent(runs, row).data.metrics
        for metric in table.mean.columns:
            assert metrics[f"{metric}_mean"] == table.mean.at[row, metric]
            assert metrics[f"{metric}_std"] == table.std.at[row, metric]
        assert metrics["n_runs"] == table.runs[row]


def check_parent_spans_its_jobs(tracked):
    """A parent's duration is the real duration of its jobs, not the milliseconds it took to log."""
    runs = _runs(tracked)
    parent = _parent(runs, "br")
    children = [r for r in _by_kind(runs, "job") if r.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    spans = [Record.from_dict(r).span_ms() for r in tracked["store"].records("tiny", "br")]
    assert sorted(c.info.start_time for c in children) == sorted(s for s, _ in spans)
    assert parent.info.start_time == min(c.info.start_time for c in children)
    assert parent.info.end_time == max(c.info.end_time for c in children)
    assert parent.info.end_time - parent.info.start_time >= sum(e - s for s, e in spans) / 6


def check_aggregates_follow_the_resume(tracked):
    client = _client(tracked["results"])
    first = {r.data.tags["bench.row"]: r for r in _by_kind(tracked["first"], "parent")}
    assert first["br"].data.metrics["n_runs"] == 3
    parent = _parent(_runs(tracked), "br")
    assert parent.info.run_id == first["br"].info.run_id  # the same parent, updated
    history = client.get_metric_history(parent.info.run_id, "n_runs")
    assert [(m.step, m.value) for m in history] == [(3, 3.0), (6, 6.0)]
    steps = [m.step for m in client.get_metric_history(parent.info.run_id, "mAP_mean")]
    assert steps == [3, 6]


def check_child_metrics_and_curves(tracked):
    client = _client(tracked["results"])
    runs = _runs(tracked)
    record = next(r for r in tracked["store"].records("tiny", "curvy")
                  if r["config"]["seed"] == 1 and not r["overrides"])
    child = next(r for r in _by_kind(runs, "job") if r.data.tags["bench.job_id"] == record["job_id"])
    assert child.data.params["fold"] == str(record["config"]["fold"]) and child.data.params["seed"] == "1"
    assert child.data.metrics["mAP"] == pytest.approx(record["metrics"]["mAP"])
    loss = client.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(e, 1.0 / (e + 1) + 1) for e in range(4)]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "val_mAP")] == [0, 1, 2, 3]
    by_steps = client.get_metric_history(child.info.run_id, "steps/mAP")
    assert [m.step for m in by_steps] == [1, 2]
    assert [m.value for m in by_steps] == pytest.approx([s["mAP"] for s in record["step_metrics"]])
    assert record["step_metrics"][1]["mAP"] == pytest.approx(record["metrics"]["mAP"])  # last step = output
    assert child.data.tags["mlflow.parentRunId"] == _parent(runs, "curvy").info.run_id
    environment = json.loads(child.data.tags["bench.environment"])
    assert environment == record["environment"]  # library versions and all


def check_step_scores_stored_with_the_job(tracked):
    store = tracked["store"]
    record = next(store.records("tiny", "curvy"))
    arrays = store.arrays(record)
    assert arrays["step_scores"].shape == (2, *arrays["scores"].shape)
    np.testing.assert_allclose(arrays["step_scores"][-1], arrays["scores"], rtol=1e-6)
    assert "step_scores" not in store.arrays(next(store.records("tiny", "br")))


def _artifacts(client, run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def check_tables_and_figures_on_parents_and_leaderboard(tracked):
    client = _client(tracked["results"])
    runs = _runs(tracked)
    board = _by_kind(runs, "leaderboard")[0]
    board_files = _artifacts(client, board.info.run_id)
    assert {"tables/tiny__kfold3.md", "tables/tiny__kfold3.tex", "tables/tiny__kfold3.json",
            "figures/tiny__kfold3__convergence_curvy.png", "figures/tiny__kfold3__modalities.png",
            "figures/tiny__kfold3__sensitivity_curvy_scale.png"} <= set(board_files)
    table = json.loads(open(client.download_artifacts(board.info.run_id, "tables/tiny__kfold3.json")).read())
    assert "br" in [row[table["columns"].index("row")] for row in table["data"]]
    curvy = _artifacts(client, _parent(runs, "curvy").info.run_id)
    assert {"tables/tiny__kfold3.md", "figures/tiny__kfold3__convergence_curvy.png",
            "figures/tiny__kfold3__sensitivity_curvy_scale.png"} <= set(curvy)
    br = _artifacts(client, _parent(runs, "br").info.run_id)
    assert "figures/tiny__kfold3__convergence_curvy.png" not in br  # br has no history_: not in that figure
    child = _by_kind(runs, "job")[0]
    ap = json.loads(open(client.download_artifacts(child.info.run_id, "per_label_ap.json")).read())
    assert list(ap) == ["l0", "l1", "l2", "l3"]
    figures = tracked["root"] / "reports" / "figures"
    assert (figures / "tiny__kfold3__convergence_curvy.pdf").read_bytes().startswith(b"%PDF")
    assert (figures / "tiny__kfold3__modalities.png").read_bytes().startswith(b"\x89PNG")


def check_a_copied_store_keeps_its_artifacts(tracked):
    """A copied results folder used to send new artifacts to the original folder's mlartifacts/."""
    from mlflow import MlflowClient

    moved = tracked["moved"]
    before, after = tracked["original_artifacts"]
    assert before == after  # nothing written into the original folder by the copy's report
    client = MlflowClient(default_tracking_uri(moved))
    exp = client.get_experiment_by_name("bench")
    assert exp.artifact_location == (moved / "mlartifacts").resolve().as_uri()
    board = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("bench.kind") == "leaderboard")
    assert board.info.artifact_uri.startswith((moved / "mlartifacts").resolve().as_uri())
    assert (moved / "mlartifacts" / board.info.run_id / "artifacts" / "tables").is_dir()
    # the copy's report logged its tables into the copy (over those copied along), none into the original
    logged = [p for p in (moved / "mlartifacts").rglob("tiny__kfold3.md") if p.stat().st_mtime_ns > tracked["copied_at"]]
    assert len(logged) >= 2  # the leaderboard's and br's parent's, at least


def _with(record: dict, **changes) -> dict:
    return {**record, **changes}


def check_a_job_is_logged_in_one_batch(tracked):
    from mlflow import MlflowClient

    store = tracked["store"]
    record = next(r for r in store.records("tiny", "curvy") if not r["overrides"])
    calls = []
    original = MlflowClient.log_batch

    def counting(self, run_id, *args, **kwargs):
        calls.append(run_id)
        return original(self, run_id, *args, **kwargs)

    tracker = Tracker(default_tracking_uri(tracked["results"]))
    assert tracker.experiment_id  # the store is open: count only the job's own calls
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MlflowClient, "log_batch", counting)
        tracker.log_job(_with(record, job_id="one-batch-job"))  # a new job of an existing row
    assert not tracker.disabled and len(calls) == 1
    [child] = [r for r in _by_kind(_runs(tracked), "job") if r.data.tags["bench.job_id"] == "one-batch-job"]
    assert child.data.metrics["mAP"] == pytest.approx(record["metrics"]["mAP"])
    assert len(child.data.metrics) > 30 and child.data.params["fold"] == str(record["config"]["fold"])
    tracker.client.delete_run(child.info.run_id)


def check_forced_rerun_replaces_the_child_only_when_its_result_changed(tracked):
    store = tracked["store"]
    record = next(store.records("tiny", "br"))
    tracker = Tracker(default_tracking_uri(tracked["results"]))

    def children():
        return [r for r in _by_kind(_runs(tracked), "job") if r.data.tags["bench.job_id"] == record["job_id"]]

    [before] = children()
    tracker.log_job(_with(record, finished_at="2030-01-01T00:00:00+0000"))  # re-run, same result
    assert [r.info.run_id for r in children()] == [before.info.run_id]
    changed = _with(record, metrics={**record["metrics"], "mAP": 0.123}, finished_at="2030-01-01T00:00:00+0000")
    tracker.log_job(changed)
    tracker.log_job(changed)
    [after] = children()
    assert after.info.run_id != before.info.run_id and after.data.metrics["mAP"] == 0.123
    tracker.log_job(record)  # back to what the store holds, for the other tests' sake
    assert [r.data.tags["bench.finished_at"] for r in children()] == [record["finished_at"]]
    assert not tracker.disabled


def test_tracking_failure_is_one_warning_and_results_are_kept(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("BENCH_MLFLOW", raising=False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    uri = f"sqlite:///{blocker / 'mlflow.db'}"
    with caplog.at_level(logging.WARNING, logger="bench.tracking"):
        rc = main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress",
                   "--tracking-uri", uri])
    assert rc == 0
    assert len(list(ResultStore(tmp_path / "results").records())) == 2
    warnings = [r for r in caplog.records if r.name == "bench.tracking"]
    assert len(warnings) == 1 and "MLflow logging to" in warnings[0].getMessage()
    assert "\n" not in warnings[0].getMessage()


def test_switches(monkeypatch, tmp_path):
    monkeypatch.delenv("BENCH_MLFLOW", raising=False)
    assert tracking_enabled() and not tracking_enabled(no_mlflow=True)
    monkeypatch.setenv("BENCH_MLFLOW", "0")
    assert not tracking_enabled()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    tracker = Tracker.for_results(tmp_path)
    assert tracker.uri == "http://mlflow.example:5000" and tracker.artifact_root is None
    assert Tracker.for_results(tmp_path, "sqlite:////x/y.db").artifact_root == "file:///x/mlartifacts"


def test_a_broken_mlflow_database_that_holds_runs_is_left_alone_and_one_line_says_what_to_do(
        tmp_path, monkeypatch, caplog):
    import sqlite3

    import mlflow

    from bench.results import Results

    db = tmp_path / "results" / "mlflow.db"
    db.parent.mkdir()
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE runs (run_uuid TEXT)")
        con.executemany("INSERT INTO runs VALUES (?)", [("a",), ("b",)])
    content = db.read_bytes()

    def broken(tracking_uri):
        raise RuntimeError("(sqlite3.OperationalError) table span_metrics already exists\n[SQL: CREATE TABLE ...]")

    monkeypatch.setattr(mlflow, "MlflowClient", broken)
    tracker = Tracker.for_results(tmp_path / "results")
    with caplog.at_level(logging.WARNING, logger="bench.tracking"):
        assert tracker.sync(Results([])) is None
        tracker.log_job({"job_id": "x", "config": {"method": "m", "dataset": "d", "protocol": "kfold", "n_folds": 2,
                                                   "fold": 0, "seed": 0}, "metrics": {}})
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bench.tracking"]
    assert "table span_metrics already exists" in warning and "holds 2 run(s)" in warning
    assert f"move it aside (mv {db} {db}.broken) and run `bench report`" in warning and "\n" not in warning
    assert db.read_bytes() == content and tracker.disabled
