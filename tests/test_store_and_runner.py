"""The results store (atomic, corruption-aware) and the orchestrator (ids, resume, failures)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import plugins, runner
from bench.errors import BenchError
from bench.metrics import evaluate
from bench.runner import build_jobs, parse_overrides, run_jobs
from bench.store import ResultStore, atomic_write_bytes


def jobs_for(tmp_path, methods=("br",), dataset="tiny", **kw):
    args = dict(protocol=None, n_folds=3, seeds=None, overrides={}, data_root=tmp_path / "data",
                store_root=tmp_path / "results")
    args.update(kw)
    return build_jobs(list(methods), [dataset], **args)


# --------------------------------------------------------------------------- store
def test_store_round_trip_and_corruption_detection(tmp_path):
    store = ResultStore(tmp_path)
    record = {"job_id": "abc", "config": {"dataset": "d", "method": "m"}, "metrics": {"mAP": 0.5},
              "timings": {}}
    store.write(record, {"scores": np.arange(4.0)})
    loaded = store.load("d", "m", "abc")
    assert loaded["metrics"] == {"mAP": 0.5}
    assert np.array_equal(store.arrays(loaded)["scores"], np.arange(4.0))
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind

    npz = tmp_path / "d" / "m" / "abc.npz"
    npz.write_bytes(npz.read_bytes()[:-5])  # truncated arrays: digest mismatch
    assert store.load("d", "m", "abc") is None
    store.write(record, {"scores": np.arange(4.0)})
    (tmp_path / "d" / "m" / "abc.json").write_text('{"job_id": "abc", "con')  # torn JSON
    assert store.load("d", "m", "abc") is None and list(store.records()) == []


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "out" / "f.json"
    atomic_write_bytes(path, b"old")

    def boom(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(path.parent) == ["f.json"]


# --------------------------------------------------------------------------- job identity
def test_job_ids_are_stable_and_depend_on_every_config_part(tmp_path):
    a = jobs_for(tmp_path)
    b = jobs_for(tmp_path)
    assert [j.job_id for j in a] == [j.job_id for j in b]
    assert len({j.job_id for j in a}) == 3
    other_param = jobs_for(tmp_path, overrides={"C": 0.5})
    other_seed = jobs_for(tmp_path, seeds=(1,))
    other_folds = jobs_for(tmp_path, n_folds=4)
    for other in (other_param, other_seed, other_folds):
        assert not {j.job_id for j in a} & {j.job_id for j in other}
    assert a[0].config["params"]["random_state"] == 0 and other_seed[0].config["params"]["random_state"] == 1


def test_overrides_are_parsed_scoped_and_checked(tmp_path):
    assert parse_overrides(["lr=0.01", "n=3", "pretrained=False", "name=resnet", "t=(1, 2)", "x=none"]) == {
        "lr": 0.01, "n": 3, "pretrained": False, "name": "resnet", "t": (1, 2), "x": None}
    with pytest.raises(BenchError, match="--set expects key=value, got 'lr'"):
        parse_overrides(["lr"])
    with pytest.raises(BenchError, match="no selected method has a hyper-parameter 'lr'"):
        jobs_for(tmp_path, overrides={"lr": 0.1})
    with pytest.raises(BenchError, match="method 'br' has no hyper-parameter 'lr'"):
        jobs_for(tmp_path, overrides={"br.lr": 0.1})
    with pytest.raises(BenchError, match="method 'rmcl' is not among the selected"):
        jobs_for(tmp_path, overrides={"rmcl.C": 0.1})
    jobs = jobs_for(tmp_path, overrides={"br.C": 0.1})
    assert jobs[0].params["C"] == 0.1 and jobs[0].overrides == {"C": 0.1}


# --------------------------------------------------------------------------- running
def test_run_stores_honest_metrics_and_resumes(tmp_path):
    jobs = jobs_for(tmp_path)
    first = run_jobs(jobs, progress=False)
    assert (first.ran, first.skipped, first.failures) == (3, 0, [])
    store = ResultStore(tmp_path / "results")
    data = runner.load_dataset("tiny", str(tmp_path / "data"))
    for rec in store.records("tiny", "br"):
        arrays = store.arrays(rec)
        # The stored metrics are exactly what evaluate() gives on the stored test predictions.
        again = evaluate(data.Y[arrays["test_index"]], arrays["scores"], arrays["y_pred"])
        assert rec["metrics"] == pytest.approx(dict(again), rel=1e-6, nan_ok=True)
        assert rec["n_train"] + rec["n_test"] == 120 and rec["timings"]["fit_s"] > 0
        assert rec["metrics"]["micro_f1"] > 0.7  # the tiny labels are learnable from its features

    second = run_jobs(jobs_for(tmp_path), progress=False)
    assert (second.ran, second.skipped) == (0, 3)
    # A corrupt result is detected and only that job re-runs; --force re-runs all.
    victim = next((tmp_path / "results" / "tiny" / "br").glob("*.json"))
    victim.write_text("{")
    third = run_jobs(jobs_for(tmp_path), progress=False)
    assert (third.ran, third.skipped) == (1, 2)
    assert run_jobs(jobs_for(tmp_path), force=True, progress=False).ran == 3


def test_parallel_workers_give_the_same_results_as_in_process(tmp_path):
    serial = run_jobs(jobs_for(tmp_path, store_root=tmp_path / "a"), progress=False)
    parallel = run_jobs(jobs_for(tmp_path, store_root=tmp_path / "b"), n_jobs=2, progress=False)
    by_id = {r["job_id"]: r["metrics"] for r in serial.records}
    assert len(parallel.records) == 3
    for rec in parallel.records:
        assert rec["metrics"] == pytest.approx(by_id[rec["job_id"]], nan_ok=True)


def test_a_failing_method_is_reported_and_other_jobs_are_kept(tmp_path, isolated):
    (isolated / "methods" / "flaky.py").write_text(
        "import numpy as np\nfrom bench.api import Method\n"
        "class Flaky(Method):\n    name = 'flaky'\n"
        "    def fit(self, train, val=None):\n        raise ZeroDivisionError('boom')\n"
        "class WrongShape(Method):\n    name = 'wrong-shape'\n"
        "    def fit(self, train, val=None):\n        return self\n"
        "    def predict_scores(self, data):\n        return np.zeros((data.n_samples, 1))\n"
    )
    summary = run_jobs(jobs_for(tmp_path, methods=("br", "flaky", "wrong-shape")), progress=False)
    assert summary.ran == 9 and len(summary.records) == 3
    errors = sorted({f["error"] for f in summary.failures})
    assert errors == ["ZeroDivisionError: boom",
                      "method 'wrong-shape': predict_scores returned shape (40, 1), expected (40, 4)"]


def test_label_without_training_positives_is_noted_not_fatal(tmp_path, isolated, caplog):
    (isolated / "datasets" / "rare.py").write_text(
        "import numpy as np\nfrom bench.api import Dataset\nfrom bench.data import MultiLabelData\n"
        "class Rare(Dataset):\n    name = 'rare'\n    protocol = 'official'\n    embedded = True\n"
        "    def load(self, root):\n        rng = np.random.default_rng(0)\n"
        "        Y = (rng.random((60, 2)) < 0.5).astype('uint8'); Y[:, 1] = 0; Y[50:, 1] = 1\n"
        "        return MultiLabelData('rare', {'f': rng.normal(size=(60, 3))}, Y, ('a', 'b'),\n"
        "            protocol='official', splits={'train': np.arange(40), 'test': np.arange(40, 60)})\n"
    )
    summary = run_jobs(jobs_for(tmp_path, dataset="rare", seeds=(0,)), progress=False)
    assert not summary.failures
    rec = summary.records[0]
    assert "['b'] have no positive example in the training part" in rec["notes"][0]
    assert "no positive example" in caplog.text
    assert np.all(ResultStore(tmp_path / "results").arrays(rec)["scores"][:, 1] == 0)  # constant predictor


def test_device_resolution():
    assert runner.resolve_device("auto", needs_torch=False) == "cpu"
    assert runner.resolve_device("cpu", needs_torch=True) == "cpu"
    with pytest.raises(BenchError, match="--device must be auto, cpu, cuda or cuda:N"):
        runner.resolve_device("tpu", needs_torch=True)
    import torch

    if not torch.cuda.is_available():
        assert runner.resolve_device("auto", needs_torch=True) == "cpu"
        with pytest.raises(BenchError, match="torch sees no CUDA device"):
            runner.resolve_device("cuda", needs_torch=True)


def test_stored_record_is_plain_json(tmp_path):
    run_jobs(jobs_for(tmp_path, n_folds=2), progress=False)
    path = next(Path(tmp_path / "results").rglob("*.json"))
    rec = json.loads(path.read_text())
    assert set(rec["config"]) == {"method", "dataset", "params", "protocol", "n_folds", "fold", "seed",
                                  "split_hash", "data_fingerprint"}
    assert len(rec["per_label_ap"]) == 4 and rec["environment"]["device"] == "cpu"


# --------------------------------------------------------------------------- threads, environment, readouts
PROBE_METHOD = '''
import numpy as np
import torch
from threadpoolctl import threadpool_info
from bench.api import Method


class ThreadProbe(Method):
    """Records, while it fits, the thread pools it runs under; scores = the label frequencies."""

    name = "thread-probe"

    def fit(self, train, val=None):
        self.pools_ = {p["internal_api"]: p["num_threads"] for p in threadpool_info()}
        self.torch_threads_ = torch.get_num_threads()
        self.prior_ = train.Y.mean(axis=0)
        self.history_ = [{"epoch": 1, "blas": max(self.pools_.values()), "torch": self.torch_threads_}]
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))

    def predict_readouts(self, data):
        scores = self.predict_scores(data)
        return {"half": scores / 2, "squared": scores ** 2}
'''


@pytest.mark.parametrize("n_jobs, threads, load", [(1, None, 0.0), (1, 1, 0.0), (2, None, 0.0), (1, None, 99.0)])
def test_every_job_runs_under_recorded_thread_limits(tmp_path, isolated, monkeypatch, n_jobs, threads, load):
    import torch
    from threadpoolctl import threadpool_info

    from bench.backends.devices import available_cores

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))  # other processes' work
    (isolated / "methods" / "probe.py").write_text(PROBE_METHOD)
    before = ({p["filepath"]: p["num_threads"] for p in threadpool_info()}, torch.get_num_threads())
    summary = run_jobs(jobs_for(tmp_path, methods=("thread-probe",), n_folds=2), n_jobs=n_jobs, threads=threads,
                       progress=False)
    assert not summary.failures, summary.failures
    # The idle cores (all of them at load 0, one when the machine is busy) divided among running jobs.
    expected = threads or (1 if load >= available_cores() else max(1, available_cores() // n_jobs))
    for rec in summary.records:
        limits = rec["environment"]["threads"]
        assert limits["limit"] == expected and limits["torch"] == expected
        assert limits["openblas"] == expected  # numpy's and scipy's OpenBLAS, as the job saw them
        assert rec["history"][0]["blas"] == expected and rec["history"][0]["torch"] == expected
    # In-process jobs hand the pools back as they found them.
    assert ({p["filepath"]: p["num_threads"] for p in threadpool_info()}, torch.get_num_threads()) == before


def test_record_names_library_versions(tmp_path):
    import sklearn

    rec = run_jobs(jobs_for(tmp_path, n_folds=2), progress=False).records[0]
    libraries = rec["environment"]["libraries"]
    assert libraries["scikit-learn"] == sklearn.__version__ and libraries["numpy"] == np.__version__
    assert {"scipy", "iterative-stratification"} <= set(libraries)


def test_readouts_are_evaluated_and_stored_beside_the_main_row(tmp_path, isolated):
    (isolated / "methods" / "probe.py").write_text(PROBE_METHOD)
    summary = run_jobs(jobs_for(tmp_path, methods=("thread-probe",), n_folds=2), progress=False)
    store = ResultStore(tmp_path / "results")
    data = runner.load_dataset("tiny", str(tmp_path / "data"))
    for rec in summary.records:
        arrays = store.arrays(rec)
        y = data.Y[arrays["test_index"]]
        assert set(rec["readouts"]) == {"half", "squared"}
        for name, power in (("half", None), ("squared", 2)):
            main_scores = arrays["scores"].astype(np.float64)
            expected_scores = main_scores / 2 if power is None else main_scores ** 2
            np.testing.assert_allclose(arrays[f"readout__{name}"], expected_scores, rtol=1e-6)
            expected = evaluate(y, arrays[f"readout__{name}"], (arrays[f"readout__{name}"] >= 0.5).astype(np.uint8))
            assert rec["readouts"][name]["metrics"] == pytest.approx(dict(expected), nan_ok=True)
            assert rec["readouts"][name]["per_label_ap"] == pytest.approx(expected.per_label_ap, nan_ok=True)
            assert rec["readouts"][name]["undefined"] == expected.undefined
    plain = run_jobs(jobs_for(tmp_path, n_folds=2), progress=False).records[0]
    assert "readouts" not in plain and not any(k.startswith("readout__") for k in store.arrays(plain))


@pytest.mark.parametrize("readout, message", [
    ("{'Bad Name': s}", "readout name 'Bad Name' must be a short lowercase identifier"),
    ("{'over': s + 1}", "predict_readouts['over'] returned scores outside [0, 1]"),
    ("{'short': s[:1]}", "predict_readouts['short'] returned shape (1, 4)"),
])
def test_bad_readouts_fail_their_job_in_one_line(tmp_path, isolated, readout, message):
    (isolated / "methods" / "bad.py").write_text(
        "import numpy as np\nfrom bench.api import Method\n"
        "class Bad(Method):\n    name = 'bad'\n"
        "    def fit(self, train, val=None):\n        return self\n"
        "    def predict_scores(self, data):\n        return np.full((data.n_samples, 4), 0.5)\n"
        f"    def predict_readouts(self, data):\n        s = self.predict_scores(data)\n        return {readout}\n")
    failures = run_jobs(jobs_for(tmp_path, methods=("bad",), n_folds=2), progress=False).failures
    assert len(failures) == 2 and all(message in f["error"] and "\n" not in f["error"] for f in failures)


def test_reused_worker_processes_read_the_plugins_of_the_current_run(tmp_path, isolated, monkeypatch):
    """joblib keeps its worker processes between runs; they must look up plug-ins where this run
    does (its BENCH_PLUGIN_PATH), not where the run that started them did."""
    first = run_jobs(jobs_for(tmp_path, store_root=tmp_path / "a"), n_jobs=2, progress=False)
    assert not first.failures
    other = tmp_path / "other-plugins"
    (other / "methods").mkdir(parents=True)
    shutil.copytree(isolated / "datasets", other / "datasets")
    (other / "methods" / "late.py").write_text(PROBE_METHOD.replace('"thread-probe"', '"late"'))
    monkeypatch.setenv("BENCH_PLUGIN_PATH", str(other))
    plugins.load.cache_clear()
    second = run_jobs(jobs_for(tmp_path, methods=("late",), store_root=tmp_path / "b"), n_jobs=2, progress=False)
    assert not second.failures, second.failures


@pytest.mark.parametrize("cores, load, running, expected", [
    (16, 0.2, 1, 16), (16, 3.4, 2, 6), (16, 40.0, 4, 1), (2, 0.4, 1, 2), (2, 0.6, 1, 1), (2, 5.0, 2, 1),
])
def test_threads_per_job_divides_the_idle_cores_among_running_jobs(monkeypatch, cores, load, running, expected):
    from bench.backends import devices as backends

    monkeypatch.setattr(backends, "available_cores", lambda: cores)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert backends.threads_per_job(running) == expected
    assert backends.threads_per_job(running, requested=3) == 3  # --threads: those who know better
