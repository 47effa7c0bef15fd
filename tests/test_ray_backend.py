"""The Ray backend on a local Ray started here (``ray.init(num_cpus=2)``, offline, no dashboard),
shared by every test of this module (starting Ray takes seconds): the same records as in-process;
a Ray worker killed mid-run is retried or its job reported failed while the others finish, and a
rerun runs only what is missing; an orchestrator (``bench run --backend ray``) killed by SIGKILL
leaves no corrupt file, and its rerun runs only what is missing, with one MLflow run per job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from bench.backends import ray as ray_backend  # noqa: E402
from bench.runner import build_jobs, run_jobs  # noqa: E402
from bench.store import ResultStore  # noqa: E402

# A method whose worker process dies by SIGKILL the first "deaths" times it fits a given training
# part (counted in marker files beside this file), then predicts the label priors; "sleep_s" makes
# it slow enough to be killed from outside. Both are read from settings.json at each fit (Ray
# reuses worker processes, so the module is imported once).
MORTAL = '''
import json, os, signal, time
from pathlib import Path

import numpy as np

from bench.api import Method
from bench.data import FEATURES


class Mortal(Method):
    name = "mortal"
    accepts = frozenset({FEATURES})
    citation = "a test method that kills its own worker"

    def __init__(self, random_state: int = 0):
        self.random_state = random_state

    def fit(self, train, val=None):
        here = Path(__file__).parent
        settings = json.loads((here / "settings.json").read_text())
        key = f"{train.n_samples}-{int(train.Y.sum())}-{abs(int(train.concatenated_features()[0, 0] * 1e6))}"
        markers = here / "deaths"
        markers.mkdir(exist_ok=True)
        died = len(list(markers.glob(key + ".*")))
        if died < settings["deaths"]:
            (markers / f"{key}.{died}").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(settings["sleep_s"])
        self.prior_ = train.Y.mean(axis=0)
        return self

    def predict_scores(self, data):
        return np.tile(self.prior_, (data.n_samples, 1))
'''


@pytest.fixture(scope="module")
def ray_address():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def jobs(tmp_path, method="br", folds=3):
    return build_jobs([method], ["tiny"], protocol="kfold", n_folds=folds, seeds=None, overrides={},
                      data_root=tmp_path / "data", store_root=tmp_path / "results")


def write_mortal(plugin_root: Path, deaths: int, sleep_s: float = 0.0) -> None:
    from bench import plugins

    (plugin_root / "methods" / "mortal.py").write_text(textwrap.dedent(MORTAL))
    (plugin_root / "methods" / "settings.json").write_text(json.dumps({"deaths": deaths, "sleep_s": sleep_s}))
    plugins.load.cache_clear()


def test_the_ray_backend(ray_address, tmp_path, isolated, monkeypatch, capsys):
    """The three checks below, in one test so that one Ray session serves them all (pytest-xdist
    would spread separate tests over its workers, each starting Ray: tens of seconds each). The
    test method's file is written first: Ray reuses its workers, which read the plug-in folder once."""
    write_mortal(isolated, deaths=0)
    same_records_as_in_process(tmp_path / "same")
    killed_workers_are_retried_or_reported(tmp_path / "workers", isolated, monkeypatch)
    killed_orchestrator_leaves_no_corrupt_file(ray_address, tmp_path / "orchestrator", isolated, monkeypatch, capsys)


def same_records_as_in_process(tmp_path):
    local = run_jobs(jobs(tmp_path / "local"), progress=False)
    on_ray = run_jobs(jobs(tmp_path / "ray"), progress=False, backend="ray")
    assert not on_ray.failures and on_ray.ran == 3
    by_id = {r["job_id"]: r for r in local.records}
    assert set(by_id) == {r["job_id"] for r in on_ray.records}
    stored = ResultStore(tmp_path / "ray" / "results")
    for rec in on_ray.records:
        assert rec["metrics"] == by_id[rec["job_id"]]["metrics"]
        assert rec["environment"]["ray_pid"] != os.getpid()  # it ran in a Ray worker ...
        assert stored.load("tiny", "br", rec["job_id"])["metrics"] == rec["metrics"]  # ... stored here
        np.testing.assert_array_equal(stored.arrays(rec)["scores"],
                                      ResultStore(tmp_path / "local" / "results").arrays(rec)["scores"])


def killed_workers_are_retried_or_reported(tmp_path, isolated, monkeypatch):
    """Two folds whose worker is killed once each: Ray retries them and they finish. Then the
    third fold's worker is killed on every try: it comes back failed (the stored two are skipped);
    a rerun where it no longer dies runs that one only."""
    monkeypatch.setattr(ray_backend, "MAX_RETRIES", 1)
    write_mortal(isolated, deaths=1)
    all_jobs = jobs(tmp_path, "mortal")
    first = run_jobs(all_jobs[:2], progress=False, backend="ray")
    assert first.ran == 2 and not first.failures  # each killed once, retried once, then done
    assert len(list((isolated / "methods" / "deaths").iterdir())) == 2
    write_mortal(isolated, deaths=5)  # the third fold dies on every try
    second = run_jobs(all_jobs, progress=False, backend="ray")
    assert (second.ran, second.skipped, len(second.failures)) == (1, 2, 1)
    assert "Ray task failed" in second.failures[0]["error"]
    write_mortal(isolated, deaths=0)
    third = run_jobs(jobs(tmp_path, "mortal"), progress=False, backend="ray")
    assert (third.ran, third.skipped, third.failures) == (1, 2, [])


def killed_orchestrator_leaves_no_corrupt_file(ray_address, tmp_path, isolated, monkeypatch, capsys):
    from mlflow import MlflowClient

    write_mortal(isolated, deaths=0, sleep_s=1.0)
    results = tmp_path / "results"
    env = {**os.environ, "BENCH_RESULTS": str(results), "BENCH_REPORTS": str(tmp_path / "reports"),
           "BENCH_DATA_ROOT": str(tmp_path / "data"), "BENCH_PLUGIN_PATH": str(isolated), "BENCH_MLFLOW": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "bench.cli", "run", "--method", "mortal", "--dataset", "tiny", "--folds", "3",
           "--no-progress", "--backend", "ray", "--address", ray_address]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = results / "tiny" / "mortal"
    deadline = time.monotonic() + 120
    while not list(folder.glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stored = list(folder.glob("*.json"))
    assert 1 <= len(stored) < 3, "the kill should come after the first stored job and before the last"
    for path in stored:  # complete records, arrays matching their digest
        assert ResultStore(results).load("tiny", "mortal", path.stem) is not None
    # The rerun: the same command, in this process (which holds the Ray session already; a second
    # interpreter would only add its start-up time).
    from bench.cli import main

    for name in ("BENCH_RESULTS", "BENCH_REPORTS", "BENCH_DATA_ROOT", "BENCH_MLFLOW"):
        monkeypatch.setenv(name, env[name])
    assert main(cmd[3:]) == 0
    assert f"{3 - len(stored)} job(s) run, {len(stored)} already in" in capsys.readouterr().out
    assert not [p for p in folder.iterdir() if p.suffix not in (".json", ".npz")]  # no temporary file left
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id], max_results=1000)
    job_runs = [r.data.tags["bench.job_id"] for r in runs if r.data.tags.get("bench.kind") == "job"]
    assert sorted(job_runs) == sorted(p.stem for p in folder.glob("*.json")) and len(job_runs) == 3
    assert json.loads(next(folder.glob("*.json")).read_text())["config"]["method"] == "mortal"


def test_gpu_share_follows_the_declared_memory():
    assert ray_backend.gpu_share(None, 80_000) == 1.0
    assert ray_backend.gpu_share(8_000, 80_000) == 0.1
    assert ray_backend.gpu_share(200_000, 80_000) == 1.0
