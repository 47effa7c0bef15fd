"""The results layer and the records it reads: one row per data version, typed records that keep
what they do not know, old stores read (and their numbers brought to today's conventions), files
that honour the umask, readouts as rows of their own."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import label_ranking_loss

from bench import results as results_layer
from bench import runner
from bench.cli import main
from bench.records import SCHEMA_VERSION, Record
from bench.report import build_ablation_tables, build_tables
from bench.results import Knowledge
from bench.store import ResultStore

GOLDEN_V1 = Path(__file__).parent / "golden" / "store_v1"
RUN_VIEWS = ["run", "--method", "br", "--dataset", "custom-views", "--folds", "3", "--no-progress"]


def write_views(data_root: Path, seed: int, n: int = 60) -> None:
    runner.load_dataset.cache_clear()  # each `bench` command is a new process: it reads the file anew
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x[:, :3] + rng.normal(scale=0.7, size=(n, 3)) > 0).astype("uint8")
    (data_root / "custom-views").mkdir(parents=True, exist_ok=True)
    np.savez(data_root / "custom-views" / "views.npz", Y=y, features=x)


def md_row(path: Path, row: str) -> list[str]:
    line = next(line for line in path.read_text().splitlines() if line.startswith(f"| {row} "))
    return [cell.strip().strip("*") for cell in line.strip("|").split("|")]  # a lone row is in bold


def expected_cell(records: list[dict], metric: str) -> str:
    values = np.array([r["metrics"][metric] for r in records])
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def test_a_row_never_averages_runs_made_on_different_data(tmp_path, caplog):
    """Three custom-views files run one after another used to leave one br row: the mean of all 9."""
    data_root = tmp_path / "data"
    for seed in (1, 2, 3):
        write_views(data_root, seed)
        assert main(RUN_VIEWS) == 0
    store = ResultStore(tmp_path / "results")
    fingerprints = {}
    for rec in store.records("custom-views", "br"):
        fingerprints.setdefault(rec["config"]["data_fingerprint"], []).append(rec)
    assert sorted(map(len, fingerprints.values())) == [3, 3, 3]
    newest = max(fingerprints.values(), key=lambda recs: max(r["finished_at"] for r in recs))
    table = tmp_path / "reports" / "custom-views__kfold3.md"
    # the row of the last `bench run`: the data as it is now, its 3 runs only
    cells = md_row(table, "br")
    assert cells[0] == "br"  # no dagger: 3 runs, not 3 of 9
    assert cells[1] == expected_cell(newest, "hamming_loss") and cells[-1] == expected_cell(newest, "mAP")

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench.results"):
        assert main(["report", "--no-mlflow", "--format", "md"]) == 0  # reads the data root: current version
    assert md_row(table, "br") == cells
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bench.results"]
    assert "6 on custom-views made on other versions of its data" in warning
    assert "shown: " in warning and "the data as it is now" in warning

    # the data cannot be read any more: the newest stored version is shown, and the warning says so
    write_views(data_root, 1)  # back to the first file: its version is shown again
    assert main(["report", "--no-mlflow", "--format", "md"]) == 0
    first = next(recs for recs in fingerprints.values() if recs is not newest and
                 md_row(table, "br")[1] == expected_cell(recs, "hamming_loss"))
    assert md_row(table, "br")[-1] == expected_cell(first, "mAP")
    shutil.rmtree(data_root / "custom-views")
    runner.load_dataset.cache_clear()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bench.results"):
        assert main(["report", "--no-mlflow", "--format", "md"]) == 0
    assert md_row(table, "br")[1] == expected_cell(newest, "hamming_loss")
    assert "the newest stored; the data cannot be read here" in caplog.text


def test_rows_of_one_method_differ_by_data_fingerprint_and_readout():
    def rec(job, fingerprint, readouts=None):
        return {"job_id": job, "overrides": {}, "metrics": {"mAP": 0.5}, "timings": {},
                "config": {"method": "der", "dataset": "d", "protocol": "kfold", "n_folds": 2, "fold": 0, "seed": 0,
                           "params": {"alpha": 1.0}, "data_fingerprint": fingerprint},
                "readouts": readouts or {}}

    readouts = {"first_stream": {"metrics": {"mAP": 0.4}, "per_label_ap": None, "undefined": {}}}
    rows = results_layer.rows_of([Record.from_dict(rec("a", "f1", readouts)), Record.from_dict(rec("b", "f2"))])
    keys = {(r.label, r.fingerprint, r.readout) for r in rows}
    # two data versions never share a row; a readout is a row of its own (label "der:first_stream")
    assert keys == {("der [data f1]", "f1", ""), ("der [data f2]", "f2", ""),
                    ("der:first_stream", "f1", "first_stream")}
    assert len({r.id for r in rows}) == 3


def test_readouts_are_rows_of_the_methods_ablation_table_not_of_the_main_table():
    def rec(job, method, fold, value):
        return {"job_id": job, "overrides": {}, "timings": {}, "metrics": {"mAP": value, "hamming_loss": 0.1},
                "config": {"method": method, "dataset": "d", "protocol": "kfold", "n_folds": 2, "fold": fold,
                           "seed": 0, "data_fingerprint": "f"},
                "readouts": {"first_stream": {"metrics": {"mAP": value - 0.1, "hamming_loss": 0.2},
                                              "per_label_ap": None, "undefined": {}}} if method == "der" else {}}

    records = [rec(f"{m}{f}", m, f, v) for m, v in (("der", 0.8), ("der_baseline", 0.6)) for f in (0, 1)]
    results = results_layer.from_records(records, knowledge=Knowledge(ablation_of={"der_baseline": "der"}))
    [main_table] = build_tables(results)
    assert list(main_table.mean.index) == ["der", "der_baseline"]
    [ablation] = build_ablation_tables(results)
    assert list(ablation.mean.index) == ["der", "der:first_stream", "der_baseline"]
    assert ablation.mean.at["der:first_stream", "mAP"] == pytest.approx(0.7)


def test_a_job_s_span_reads_whole_seconds_and_milliseconds_and_keeps_two_jobs_in_order():
    """start = finished_at less the job's timings. Whole seconds (records before 2026-12) put a job that
    finished at 1.9 s after one that ended at 1.0005 s before it (1 - 0.4 < 1 - 0.0005); milliseconds
    keep them in order."""
    def span(finished_at, fit_s):
        config = {"method": "m", "dataset": "d", "protocol": "kfold", "n_folds": 2, "fold": 0, "seed": 0,
                  "params": {}, "split_hash": "s", "data_fingerprint": "f"}
        return Record.from_dict({"job_id": "j", "config": config, "metrics": {}, "finished_at": finished_at,
                                 "timings": {"fit_s": fit_s}}).span_ms()

    epoch = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms
    assert span("2026-01-01T00:00:01+0000", 0.25) == (epoch + 750, epoch + 1000)
    assert span("2026-01-01T01:00:01.500+01:00", 0.25) == (epoch + 1250, epoch + 1500)
    first, second = span("2026-01-01T00:00:01.001+00:00", 0.0005), span("2026-01-01T00:00:01.900+00:00", 0.4)
    assert first[0] <= first[1] <= second[0]
    assert span("not a time", 1.0) == (None, None)


def test_record_round_trip_keeps_fields_it_does_not_know():
    raw = {"job_id": "j", "config": {"method": "m", "dataset": "d", "protocol": "kfold", "n_folds": 2, "fold": 1,
                                     "seed": 0, "params": {"C": 1.0}, "split_hash": "s", "data_fingerprint": "f",
                                     "scale_defaults": {"epochs": 3}, "new_config_key": [1, 2]},
           "metrics": {"mAP": 0.5}, "overrides": {}, "per_label_ap": [0.5, None], "undefined": {"mAP": 1},
           "label_names": ["a", "b"], "n_train": 3, "n_test": 2, "timings": {"fit_s": 1.0}, "history": [],
           "notes": [], "finished_at": "2026-01-01T00:00:00+0000", "arrays_sha256": "x",
           "environment": {"threads": 2, "versions": {"scikit-learn": "1.8", "torch": "2.14.1"}},
           "readouts": {"first_stream": {"metrics": {"mAP": 0.4}, "per_label_ap": [0.1, 0.2], "undefined": {},
                                         "extra_readout_key": 1}},
           "a_key_of_the_run_side": {"x": 1}, "format_version": SCHEMA_VERSION}
    record = Record.from_dict(raw)
    assert record.config.scale_defaults == {"epochs": 3} and record.readouts["first_stream"].metrics == {"mAP": 0.4}
    assert record.environment["versions"]["torch"] == "2.14.1"
    assert record.to_dict() == raw
    assert json.loads(json.dumps(record.to_dict())) == raw


def test_an_old_store_is_read_and_its_ranking_loss_follows_todays_convention(tmp_path):
    """``tests/golden/store_v1`` was written by bench at b1a1eee (format 1): ranking loss then
    skipped the examples without a relevant or an irrelevant label; read today it counts them as
    scikit-learn does, computed here from the stored test predictions."""
    shutil.copytree(GOLDEN_V1, tmp_path / "v1")
    store = ResultStore(tmp_path / "v1" / "results")
    raw = list(store.records())
    assert len(raw) == 2
    on_disk = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "v1" / "results").rglob("*.json")}
    y = np.load(tmp_path / "v1" / "data" / "custom-views" / "views.npz")["Y"]
    for rec in raw:
        old = on_disk[rec["job_id"]]
        assert old["format_version"] == 1 and old["undefined"]["ranking_loss"] > 0
        arrays = store.arrays(rec)
        truth = y[arrays["test_index"]]
        assert rec["metrics"]["ranking_loss"] == pytest.approx(label_ranking_loss(truth, arrays["scores"]), abs=1e-12)
        assert "ranking_loss" not in rec["undefined"] and rec["format_version"] == SCHEMA_VERSION
        assert {k: v for k, v in rec["metrics"].items() if k != "ranking_loss"} == \
            {k: v for k, v in old["metrics"].items() if k != "ranking_loss"}
    assert main(["--results", str(tmp_path / "v1" / "results"), "--data-root", str(tmp_path / "v1" / "data"),
                 "report", "--no-mlflow", "--format", "md", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "custom-views__kfold2.md").is_file()


def test_a_record_of_a_newer_schema_is_reported_not_misread(tmp_path, caplog):
    store = ResultStore(tmp_path)
    store.write({"job_id": "j", "config": {"dataset": "d", "method": "m"}, "metrics": {}, "timings": {}},
                {"scores": np.zeros(1)})
    path = tmp_path / "d" / "m" / "j.json"
    path.write_text(path.read_text().replace(f'"format_version": {SCHEMA_VERSION}', '"format_version": 99'))
    with caplog.at_level(logging.WARNING, logger="bench.store"):
        assert list(store.records()) == []
    assert "format_version 99 is not one of (1, 2) (written by a newer bench?)" in caplog.text


def _modes(folder: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o007, 0o660)])
def test_every_result_table_and_figure_file_honours_the_umask(tmp_path, isolated, umask, mode):
    """Every such file used to be 0600 (mkstemp), whatever the umask: unreadable for teammates."""
    from test_tracking import CURVY

    (isolated / "methods" / "curvy.py").write_text(CURVY)  # a method with a history: figures too
    old = os.umask(umask)
    try:
        assert main(["run", "--method", "br,curvy", "--dataset", "tiny", "--folds", "2", "--no-progress"]) == 0
        assert main(["report", "--no-mlflow"]) == 0
    finally:
        os.umask(old)
    figures = list((tmp_path / "reports" / "figures").glob("*.png"))
    assert figures and list((tmp_path / "results").rglob("*.npz")) and list((tmp_path / "reports").glob("*.tex"))
    assert _modes(tmp_path / "results") == {mode} and _modes(tmp_path / "reports") == {mode}


def test_left_out_records_are_counted_in_one_warning(tmp_path, caplog):
    records = [{"job_id": f"j{fp}{f}", "overrides": {}, "metrics": {"mAP": 0.5}, "timings": {},
                "finished_at": f"2026-01-0{i + 1}T00:00:00+0000",
                "config": {"method": "m", "dataset": "d", "protocol": "kfold", "n_folds": 2, "fold": f, "seed": 0,
                           "data_fingerprint": fp}}
               for i, fp in enumerate(("old", "new")) for f in (0, 1)]
    with caplog.at_level(logging.WARNING, logger="bench.results"):
        results = results_layer.from_records(records, knowledge=Knowledge())
    assert {r.config.data_fingerprint for r in results.records} == {"new"}
    [warning] = [r.getMessage() for r in caplog.records if r.name == "bench.results"]
    assert re.search(r"left out 2 stored run\(s\): 2 on d made on other versions of its data "
                     r"\(fingerprints old \(2\); shown: new, the newest stored; the data cannot be read here\)", warning)


def test_a_stored_record_without_its_split_fields_is_reported_and_left_out(tmp_path, caplog):
    store = ResultStore(tmp_path)
    good = {"job_id": "g", "overrides": {}, "timings": {}, "metrics": {"mAP": 0.5},
            "config": {"dataset": "d", "method": "m", "protocol": "kfold", "n_folds": 2, "fold": 0, "seed": 0}}
    store.write(good, {"scores": np.zeros(1)})
    store.write({**good, "job_id": "bad", "config": {"dataset": "d", "method": "m"}}, {"scores": np.zeros(1)})
    with caplog.at_level(logging.WARNING, logger="bench.results"):
        records = results_layer.read_records(store)
    assert [r.job_id for r in records] == ["g"]
    assert f"ignoring result {tmp_path / 'd' / 'm' / 'bad.json'} (config lacks protocol, n_folds, fold, seed)" in caplog.text
