"""MLflow under real processes: a ``bench run`` killed with SIGKILL while it creates the MLflow
database, then run again, logs normally; two ``bench run`` processes started together on a fresh
store both log, with no job logged twice; two concurrent ``--force`` re-runs leave one child per job.

Each test starts real ``python -m bench.cli`` processes (MLflow's SQLite migrations take seconds,
so these are the slowest tests; two, kept apart so that pytest-xdist runs them side by side).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

RUN = ["-m", "bench.cli", "run", "--method", "br", "--dataset", "tiny", "--no-progress"]


def _env(tmp_path: Path, isolated: Path) -> dict:
    env = {**os.environ, "BENCH_RESULTS": str(tmp_path / "results"), "BENCH_REPORTS": str(tmp_path / "reports"),
           "BENCH_DATA_ROOT": str(tmp_path / "data"), "BENCH_PLUGIN_PATH": str(isolated), "BENCH_MLFLOW": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *RUN, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return err


def _active_runs(results: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench")
    return list(client.search_runs([exp.experiment_id], max_results=1000))


def _kinds(runs, kind):
    return [r for r in runs if r.data.tags.get("bench.kind") == kind]


def _scripts():
    from alembic.script import ScriptDirectory
    from mlflow.store import db

    return ScriptDirectory(str(Path(db.__file__).parent.parent / "db_migrations"))


def _head_revision() -> str:
    return _scripts().get_current_head()


def _a_migration_that_creates_a_table() -> str:
    """The middle one of MLflow's migrations that create a table (``span_metrics`` in MLflow 3):
    killed after its DDL and before its version stamp, the database cannot be migrated again
    ("table ... already exists")."""
    creating = [s.revision for s in reversed(list(_scripts().walk_revisions()))
                if "create_table(" in Path(s.path).read_text()]
    return creating[len(creating) // 2]


#: ``bench run`` as ``python -m bench.cli`` runs it, except that it stops inside MLflow's database
#: set-up, right after ``argv[1]``'s migration ran and before alembic stamps it, touches
#: ``argv[2]`` and waits there to be killed: so the kill lands mid-migration every time, not when
#: a polling loop happens to catch the moment.
PAUSED_IN_A_MIGRATION = """
import pathlib, sys, time
from alembic.runtime import migration
from bench.cli import main

update_to_step = migration.HeadMaintainer.update_to_step

def paused(self, step):
    if getattr(getattr(step, "revision", None), "revision", None) == sys.argv[1]:
        pathlib.Path(sys.argv[2]).touch()
        time.sleep(600)
    return update_to_step(self, step)

migration.HeadMaintainer.update_to_step = paused
sys.exit(main(sys.argv[3:]))
"""


def _revision(path: Path) -> str | None:
    """The alembic revision a database is stamped with (None before the first stamp)."""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            return row[0] if row else None
    except sqlite3.Error:
        return None


def test_run_killed_while_creating_the_mlflow_database_then_run_again_logs_normally(tmp_path, isolated):
    env = _env(tmp_path, isolated)
    db = tmp_path / "results" / "mlflow.db"
    marker = tmp_path / "inside-a-migration"
    revision = _a_migration_that_creates_a_table()
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_IN_A_MIGRATION, revision, str(marker), *RUN[2:],
                             "--folds", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, f"bench run ended before reaching MLflow migration {revision}: {proc.communicate()}"
        assert time.monotonic() < deadline, "bench run did not reach MLflow's database set-up in time"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert _revision(db) not in (revision, _head_revision())  # left half-way through MLflow's migrations

    err = _finish(_start(env, "--folds", "2"))  # the jobs are stored: this run only logs them
    assert "half-created" in err and "MLflow logging" not in err
    runs = _active_runs(tmp_path / "results")
    jobs = _kinds(runs, "job")
    assert len(jobs) == 2 and len({j.data.tags["bench.job_id"] for j in jobs}) == 2
    [parent] = _kinds(runs, "parent")
    assert parent.data.metrics["n_runs"] == 2 and {j.data.tags["mlflow.parentRunId"] for j in jobs} == {parent.info.run_id}


def test_two_runs_started_together_on_a_fresh_store_both_log_and_nothing_twice(tmp_path, isolated):
    env = _env(tmp_path, isolated)
    first, second = _start(env, "--folds", "3"), _start(env, "--folds", "3")
    errors = [_finish(first), _finish(second)]
    assert not any("MLflow logging" in err for err in errors), errors
    runs = _active_runs(tmp_path / "results")
    jobs = _kinds(runs, "job")
    assert sorted(j.data.tags["bench.job_id"] for j in jobs) == sorted({j.data.tags["bench.job_id"] for j in jobs})
    assert len(jobs) == 3 and len(_kinds(runs, "parent")) == 1

    # two concurrent --force re-runs of the same jobs (same results: br is deterministic)
    forced = [_start(env, "--folds", "3", "--force"), _start(env, "--folds", "3", "--force")]
    errors = [_finish(p) for p in forced]
    assert not any("MLflow logging" in err for err in errors), errors
    again = _active_runs(tmp_path / "results")
    assert sorted(r.info.run_id for r in _kinds(again, "job")) == sorted(r.info.run_id for r in jobs)
    [parent] = _kinds(again, "parent")
    assert parent.data.metrics["n_runs"] == 3


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
