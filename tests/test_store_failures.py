"""The results store's failure paths: a record that cannot be trusted is never used, and its job runs again.

Each case is built by hand (a record written by the store, then damaged the way a crash, an older
or newer version of bench, or a user's clean-up would), and checked through what a user sees: the
store no longer returns it (``load``/``records``) with one warning naming the file, and a re-run
of the same command runs exactly that job again, leaving the others stored.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from bench.runner import build_jobs, run_jobs
from bench.store import ResultStore

SCORES = np.array([[0.1, 0.9], [0.8, 0.3]])


def stored(tmp_path):
    """A store holding one record written by the store itself, and the record's JSON path."""
    store = ResultStore(tmp_path)
    record = {"job_id": "j1", "config": {"dataset": "d", "method": "m"}, "metrics": {"mAP": 0.75},
              "timings": {"fit_s": 1.0}}
    json_path = store.write(record, {"scores": SCORES})
    assert store.load("d", "m", "j1")["metrics"] == {"mAP": 0.75}  # sound before it is damaged
    return store, json_path


def rewrite(json_path, change):
    record = json.loads(json_path.read_text())
    change(record)
    json_path.write_text(json.dumps(record))


@pytest.mark.parametrize("field", ["job_id", "config", "metrics", "arrays_sha256", "format_version"])
def test_a_record_missing_a_required_field_is_ignored_with_a_warning(tmp_path, caplog, field):
    store, json_path = stored(tmp_path)
    rewrite(json_path, lambda r: r.pop(field))
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j1") is None
        assert list(store.records()) == []
    assert str(json_path) in caplog.text and field in caplog.text


@pytest.mark.parametrize("version", [0, 999, "1"])
def test_a_record_of_another_format_version_is_ignored_with_a_warning(tmp_path, caplog, version):
    store, json_path = stored(tmp_path)
    rewrite(json_path, lambda r: r.update(format_version=version))
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j1") is None
        assert list(store.records("d", "m")) == []
    assert str(json_path) in caplog.text and "format_version" in caplog.text


@pytest.mark.parametrize("field, value, message", [
    ("metrics", "oops", "metrics must be an object, got a string \"oops\""),
    ("metrics", {"mAP": "0.75"}, "metrics.mAP must be a number or null, got a string \"0.75\""),
    ("metrics", {"mAP": True}, "metrics.mAP must be a number or null, got a boolean true"),
    ("config", ["d", "m"], "config must be an object, got an array [\"d\", \"m\"]"),
    ("timings", 3, "timings must be an object, got a number 3"),
    ("n_test", 2.5, "n_test must be an integer, got a number 2.5"),
    ("history", [1, 2], "history[0] must be an object, got a number 1"),
    ("per_label_ap", [0.5, "x"], "per_label_ap[1] must be a number or null, got a string \"x\""),
    ("readouts", {"first": {"metrics": []}}, "readouts.first must be an object with metrics, got an object {\"metrics\": []}"),
])
def test_a_record_with_a_field_of_the_wrong_type_is_ignored_with_a_warning(tmp_path, caplog, field, value, message):
    """A record that parses but would break the read side (a TypeError deep in the tables, naming no
    file) is treated like a corrupt one: one warning naming the file and the field."""
    store, json_path = stored(tmp_path)
    rewrite(json_path, lambda r: r.update({field: value}))
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j1") is None
        assert list(store.records()) == []
    assert caplog.messages[0] == f"ignoring corrupt result {json_path} ({message}); the job will be re-run"


def test_a_wrong_typed_record_is_one_warning_in_bench_report_and_its_job_runs_again(tmp_path, capsys, caplog):
    from bench.cli import main

    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
    folder = tmp_path / "results" / "tiny" / "br"
    victim, other = sorted(folder.glob("*.json"))
    kept = other.read_bytes()
    rewrite(victim, lambda r: r.update(metrics="oops"))
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        assert main(["report", "--no-leaderboard"]) == 0
    assert [m for m in caplog.messages if "corrupt" in m] == [
        f"ignoring corrupt result {victim} (metrics must be an object, got a string \"oops\"); the job will be re-run"]
    assert "Traceback" not in capsys.readouterr().err
    assert main(["run", "--method", "br", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
    assert "1 job(s) run, 1 already in" in capsys.readouterr().out
    assert json.loads(victim.read_text())["metrics"]["mAP"] >= 0 and other.read_bytes() == kept


def test_a_record_whose_arrays_are_gone_is_ignored_with_a_warning(tmp_path, caplog):
    store, json_path = stored(tmp_path)
    json_path.with_suffix(".npz").unlink()
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j1") is None
        assert list(store.records()) == []
    assert str(json_path) in caplog.text


def test_arrays_replaced_by_other_valid_arrays_are_ignored(tmp_path, caplog):
    """A digest check, not only a parse check: another job's (valid) arrays under this name."""
    store, json_path = stored(tmp_path)
    other = ResultStore(tmp_path / "other")
    other_json = other.write({"job_id": "j1", "config": {"dataset": "d", "method": "m"}, "metrics": {},
                              "timings": {}}, {"scores": SCORES[::-1]})
    json_path.with_suffix(".npz").write_bytes(other_json.with_suffix(".npz").read_bytes())
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j1") is None
    assert caplog.messages == [f"ignoring corrupt result {json_path} (j1.npz does not match its recorded "
                               "SHA-256); the job will be re-run"]


def jobs(tmp_path):
    return build_jobs(["br"], ["tiny"], protocol=None, n_folds=3, seeds=None, overrides={},
                      data_root=tmp_path / "data", store_root=tmp_path / "results")


@pytest.mark.parametrize("damage", ["npz gone", "field missing", "other version"])
def test_a_damaged_job_is_run_again_and_only_that_job(tmp_path, damage):
    first = run_jobs(jobs(tmp_path), progress=False)
    assert (first.ran, first.skipped) == (3, 0)
    folder = tmp_path / "results" / "tiny" / "br"
    victim = sorted(folder.glob("*.json"))[1]
    untouched = {p.name: p.read_bytes() for p in folder.iterdir() if p.stem != victim.stem}
    if damage == "npz gone":
        victim.with_suffix(".npz").unlink()
    elif damage == "field missing":
        rewrite(victim, lambda r: r.pop("metrics"))
    else:
        rewrite(victim, lambda r: r.update(format_version=999))

    again = run_jobs(jobs(tmp_path), progress=False)
    assert (again.ran, again.skipped) == (1, 2)
    assert {r["job_id"] for r in again.records} >= {victim.stem}
    # the re-run job is whole again, and the others were neither rewritten nor lost
    assert ResultStore(tmp_path / "results").load("tiny", "br", victim.stem) is not None
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.stem != victim.stem} == untouched


def test_a_job_never_stored_is_absent_without_a_warning(tmp_path, caplog):
    store, _ = stored(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert store.load("d", "m", "j2") is None
    assert caplog.text == ""


def test_paths_and_numpy_values_are_stored_as_json_and_other_objects_are_refused(tmp_path):
    store = ResultStore(tmp_path)
    record = {"job_id": "j1", "config": {"dataset": "d", "method": "m", "data_root": Path("/data/x")},
              "metrics": {"mAP": np.float32(0.5)}, "timings": {"fit_s": 1.0}, "counts": np.array([1, 2])}
    store.write(record, {"scores": SCORES})
    loaded = store.load("d", "m", "j1")
    assert (loaded["config"]["data_root"], loaded["metrics"]["mAP"], loaded["counts"]) == ("/data/x", 0.5, [1, 2])
    with pytest.raises(TypeError) as err:
        store.write({**record, "job_id": "j2", "extra": {1, 2}}, {"scores": SCORES})
    assert str(err.value) == "cannot store set in a result record"


def test_a_typed_record_is_written_like_its_dict_sorted_and_indented(tmp_path):
    from bench.records import Record

    config = {"dataset": "d", "method": "m", "protocol": "kfold", "n_folds": 3, "fold": 0, "seed": 0}
    typed = Record.from_dict({"job_id": "j1", "config": config, "metrics": {"mAP": 0.75}, "timings": {}})
    again = ResultStore(tmp_path / "again").write(typed, {"scores": SCORES})
    loaded = json.loads(again.read_text())
    assert loaded["metrics"] == {"mAP": 0.75} and loaded["job_id"] == "j1"
    # One key per line, in sorted order: two runs' records diff line by line.
    assert again.read_text() == json.dumps(loaded, indent=1, sort_keys=True)


def test_the_umask_is_read_without_changing_it_with_or_without_proc(monkeypatch):
    from bench import store as store_module

    old = os.umask(0o027)
    try:
        assert store_module.current_umask() == 0o027
        class NoProc(type(Path())):  # a system without /proc/self/status
            def read_text(self, *args, **kwargs):
                raise OSError("no /proc here")
        monkeypatch.setattr(store_module, "Path", NoProc)
        assert store_module.current_umask() == 0o027
        assert os.umask(0o027) == 0o027  # left as it was
    finally:
        os.umask(old)


def test_an_atomic_write_goes_through_a_hidden_temporary_file_beside_the_target(tmp_path, monkeypatch):
    from bench import store as store_module

    target = tmp_path / "sub" / "r.json"
    target.parent.mkdir()
    target.write_bytes(b"old")
    seen = []

    def failing_replace(src, dst):
        seen.append(Path(src))
        raise OSError("disk full")

    monkeypatch.setattr(store_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        store_module.atomic_write_bytes(target, b"new")
    (tmp,) = seen
    assert tmp.parent == target.parent and tmp.name.startswith(".r.json.") and tmp.name.endswith(".tmp")
    assert not tmp.exists() and target.read_bytes() == b"old"  # the partial file is gone, the old one kept
    assert sorted(p.name for p in target.parent.iterdir()) == ["r.json"]


def test_a_records_arrays_are_read_whole_or_by_name(tmp_path):
    from bench.records import Record

    store = ResultStore(tmp_path)
    config = {"dataset": "d", "method": "m", "protocol": "kfold", "n_folds": 3, "fold": 0, "seed": 0}
    raw = {"job_id": "j1", "config": config, "metrics": {}, "timings": {}}
    store.write(raw, {"scores": SCORES, "y_pred": np.eye(2, dtype=np.uint8)})
    whole = store.arrays(raw)
    assert sorted(whole) == ["scores", "y_pred"] and np.array_equal(whole["scores"], SCORES)
    named = store.arrays(Record.from_dict(store.load("d", "m", "j1")), names=["y_pred", "absent"])
    assert list(named) == ["y_pred"] and np.array_equal(named["y_pred"], np.eye(2))
