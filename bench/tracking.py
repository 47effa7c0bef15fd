"""MLflow tracking: the rows of the results layer mirrored into an MLflow experiment.

The results store (:mod:`bench.store`) is the source of truth; MLflow is a view of it for
``mlflow ui``, built from the same :class:`bench.results.Results` the tables are. Layout, one
experiment per benchmark (``bench`` unless ``MLFLOW_EXPERIMENT_NAME``):

* a **parent run** per table row (:class:`bench.results.Row`: method, resolved hyper-parameters and
  readout, on one dataset at one data fingerprint, protocol, folds), tagged ``bench.group`` (the
  row id), holding the hyper-parameters as params, tags (code version(s), split hash(es),
  device(s), the data fingerprint) and ``<metric>_mean`` / ``<metric>_std`` plus ``n_runs``: the
  table's cells exactly (:attr:`Results.mean`, :attr:`Results.std`). The aggregates are logged with
  ``step = n_runs``, so when a resumed run adds folds the latest value is the aggregate over every
  stored fold, and the history shows how it moved. Its start and end are those of its jobs;
* a nested **child run** per job (fold/seed) under the parent of the method's own row, tagged
  ``bench.job_id`` and ``bench.result`` (:meth:`bench.records.Record.result_digest`): the fold's
  metrics, timings, readouts' metrics (``<readout>/<metric>``), per-label AP
  (``per_label_ap.json``), the per-epoch curves of ``history_`` (``step = epoch``) and, for
  methods with ``predict_steps``, ``steps/<metric>`` with ``step = number of modalities used``;
  everything but the artifact in one ``MlflowClient.log_batch`` call;
* a **leaderboard** run holding every table (Markdown/LaTeX files and ``log_table`` JSON) and figure.

The experiment is tagged as a model-training one (``mlflow.experimentKind``), so the UI opens it on
its runs, and every parent and child run names its dataset (name, data fingerprint as the digest)
as an MLflow dataset input: the runs list's Dataset column.

Safe across processes and kills. Every write happens under a file lock next to the store
(``mlflow.db.lock`` beside a SQLite database, else ``<results>/.mlflow.lock``; the ``filelock``
package): creating and migrating the database, and logging a job, which first looks the job id up
in MLflow itself, so two ``bench run`` processes never log one job twice. A ``--force`` re-run
replaces a child only when its result changed. A database left half-created by a killed process
(MLflow's migrations are not atomic) is created anew when it holds no run; one that holds runs is
never touched, and the warning says what to do. A results folder that was copied or moved keeps its
artifacts with it: the experiment's artifact location is re-pointed at the store in use.

Runs logged by an older ``bench`` (without the ``bench.schema`` tag: rows that could mix data
versions) are replaced on the next sync. MLflow is imported lazily (it takes seconds), and a
logging failure is one warning line: the results are already stored and ``bench report`` re-syncs
them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from bench.errors import BenchError
from bench.records import Record
from bench.results import Results, Row, protocol_slug, rows_of

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "bench"
SCHEMA = "2"
KIND_TAG, JOB_TAG, GROUP_TAG, RUNS_TAG, JOBS_DIGEST_TAG, RESULT_TAG, SCHEMA_TAG = (
    "bench.kind", "bench.job_id", "bench.group", "bench.n_runs", "bench.jobs_digest", "bench.result",
    "bench.schema")
PARENT_TAG = "mlflow.parentRunId"
NAME_TAG = "mlflow.runName"
#: The MLflow UI opens an experiment by its kind: model training, so on its runs (not the GenAI
#: views of traces, judges and prompts that it infers for an experiment without the tag).
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}
#: The longest dataset digest MLflow stores (the data fingerprint's start; the whole in the source).
_MAX_DIGEST = 36
LOCK_TIMEOUT_S = 900
_MAX_TAG = 5000
_MAX_PARAM = 6000


def tracking_enabled(no_mlflow: bool = False) -> bool:
    """False with ``--no-mlflow`` or ``BENCH_MLFLOW=0`` (the test suite sets it)."""
    return not no_mlflow and os.environ.get("BENCH_MLFLOW", "1").strip().lower() not in ("0", "false", "no", "off")


def default_tracking_uri(results_root: Path | str) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite store next to the results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_root).resolve() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def default_artifact_root(uri: str) -> str | None:
    """``<folder of the SQLite file>/mlartifacts`` for a local SQLite store; a server decides itself."""
    path = sqlite_path(uri)
    return (path.parent / "mlartifacts").resolve().as_uri() if path is not None else None


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / :`` and spaces; anything else becomes ``_``."""
    return re.sub(r"[^\w\-./: ]", "_", str(name)) or "_"


def parent_name(row: Row) -> str:
    return f"{row.label} · {row.dataset}@{row.fingerprint[:8]} · {protocol_slug(row.protocol, row.n_folds)}"


def child_name(record: Record) -> str:
    cfg = record.config
    return f"fold {cfg.fold} seed {cfg.seed}" if cfg.protocol == "kfold" else f"seed {cfg.seed}"


def _joined(values: Iterable) -> str:
    return ",".join(sorted({str(v) for v in values if v not in (None, "")}))[:_MAX_TAG]


def _numbers(items) -> list[tuple[str, float]]:
    return [(k, float(v)) for k, v in items if isinstance(v, int | float) and not isinstance(v, bool)]


def history_metrics(record: Record) -> list[tuple[str, float, int]]:
    """(key, value, epoch) for every numeric entry of the record's per-epoch history."""
    return [(metric_key(key), value, epoch) for key, value, epoch in record.history_points()]


def step_metrics(record: Record) -> list[tuple[str, float, int]]:
    """(``steps/<metric>``, value, number of modalities used) from ``predict_steps`` evaluations."""
    return [(f"steps/{metric_key(k)}", v, t) for t, entry in enumerate(record.step_metrics or [], 1)
            for k, v in _numbers(entry.items())]


def child_metrics(record: Record) -> list[tuple[str, float, int]]:
    """Everything a child run logs as metrics: the fold's metrics, timings, readouts, curves, steps."""
    out = [(metric_key(k), v, 0) for k, v in _numbers(record.metrics.items())]
    out += [(metric_key(k), v, 0) for k, v in _numbers(record.timings.items())]
    for name, readout in sorted(record.readouts.items()):
        out += [(f"{metric_key(name)}/{metric_key(k)}", v, 0) for k, v in _numbers(readout.metrics.items())]
    return out + history_metrics(record) + step_metrics(record)


def jobs_digest(row: Row) -> str:
    """Which results a parent aggregates: its jobs and what each measured."""
    keys = sorted(f"{r.job_id}@{r.result_digest()}" for r in row.records)
    return hashlib.sha256(",".join(keys).encode()).hexdigest()[:16]


def _span(records: Iterable[Record]) -> tuple[int | None, int | None]:
    spans = [r.span_ms() for r in records]
    starts = [s for s, _ in spans if s is not None]
    ends = [e for _, e in spans if e is not None]
    return (min(starts) if starts else None), (max(ends) if ends else None)


class TrackingError(BenchError):
    """MLflow's store cannot be used and bench will not repair it by itself."""


def warn_once(fn):
    """Run a logging entry point; on failure warn in one line and switch tracking off for the command."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return fn(self, *args, **kwargs)
        except TrackingError as exc:
            self.disabled = True
            log.warning("MLflow logging to %s stopped: %s", self.uri, exc)
        except Exception as exc:  # MLflow down, locked DB, bad URI: never lose or fail a finished run
            self.disabled = True
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            log.warning("MLflow logging to %s failed (%s: %s); results are safe in the store, "
                        "`bench report` re-syncs them", self.uri, type(exc).__name__, first_line)
        return None

    return wrapper


class Tracker:
    """Mirror of the results layer in one MLflow experiment (see the module docstring)."""

    def __init__(self, uri: str, experiment: str | None = None, artifact_root: str | None = None,
                 lock_path: Path | str | None = None):
        self.uri = uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.own_artifacts = artifact_root is None
        self.artifact_root = artifact_root if artifact_root is not None else default_artifact_root(uri)
        db = sqlite_path(uri)
        self.lock_path = Path(lock_path) if lock_path else (db.with_name(db.name + ".lock") if db else None)
        self.disabled = False

    @classmethod
    def for_results(cls, results_root: Path | str, uri: str | None = None) -> Tracker:
        uri = uri or default_tracking_uri(results_root)
        lock = None if sqlite_path(uri) else Path(results_root) / ".mlflow.lock"
        return cls(uri, lock_path=lock)

    # ------------------------------------------------------------------ lock and store
    @functools.cached_property
    def lock(self):
        """A lock shared by every bench process using this store (re-entrant within one)."""
        from filelock import FileLock

        if self.lock_path is None:  # a server without a results folder (Tracker(uri) by hand)
            return contextlib.nullcontext()
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path), timeout=LOCK_TIMEOUT_S)

    @functools.cached_property
    def client(self):
        with self.lock:
            return self._open()

    def _open(self):
        """An MlflowClient on a ready database: created and migrated under the lock, a half-created
        one (no run in it) created anew."""
        from mlflow import MlflowClient

        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)  # (after the import, which sets mlflow's level)

        db = sqlite_path(self.uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        try:
            client = MlflowClient(tracking_uri=self.uri)
            client.search_experiments(max_results=1)  # the schema is complete and current
            return client
        except Exception as exc:
            if db is None or not db.exists():
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:200]
            runs = _count_runs(db)
            if runs:
                raise TrackingError(
                    f"the MLflow database {db} cannot be opened ({first_line}) and holds {runs} run(s); "
                    f"move it aside (mv {db} {db}.broken) and run `bench report` to log the results store "
                    "anew") from None
            log.warning("the MLflow database %s was left half-created (%s) and holds no run: creating it "
                        "anew", db, first_line)
            _discard_sqlite(self.uri, db)
            client = MlflowClient(tracking_uri=self.uri)
            client.search_experiments(max_results=1)
            return client

    @functools.cached_property
    def experiment_id(self) -> str:
        with self.lock:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                return self.client.create_experiment(
                    self.experiment, artifact_location=self.artifact_root,
                    tags={"mlflow.note.content": "bench: multi-label benchmark runs", **EXPERIMENT_TAGS})
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            for key, value in EXPERIMENT_TAGS.items():  # an experiment made by an older bench
                if exp.tags.get(key) != value:
                    self.client.set_experiment_tag(exp.experiment_id, key, value)
            self._follow_moved_store(exp)
            return exp.experiment_id

    def _follow_moved_store(self, exp) -> None:
        """Re-point the artifacts of a copied or moved store (its ``mlartifacts/`` came along) at
        the folder in use; the database still names the old folder."""
        db = sqlite_path(self.uri)
        old, new = exp.artifact_location, self.artifact_root
        if db is None or not self.own_artifacts or not new or old == new or not old.startswith("file:"):
            return
        if Path(unquote(urlparse(old).path)).name != "mlartifacts":
            return  # an artifact location someone chose: not ours to move
        n = _replace_prefix(db, old, new)
        _forget_artifact_locations()
        log.info("the results store moved: %d MLflow artifact location(s) re-pointed from %s to %s", n, old, new)

    # ------------------------------------------------------------------ looking runs up
    def _search(self, filter_string: str = "") -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs += list(page)
            token = page.token
            if not token:
                return runs

    def _job_runs(self, job_id: str) -> list:
        return self._search(f"tags.`{JOB_TAG}` = '{job_id}'")

    def _parent_run(self, row: Row):
        found = self._search(f"tags.`{GROUP_TAG}` = '{row.id}' and tags.`{KIND_TAG}` = 'parent'")
        return found[0] if found else None

    # ------------------------------------------------------------------ runs
    def _create_parent(self, row: Row):
        start, end = _span(row.records)
        tags = {KIND_TAG: "parent", GROUP_TAG: row.id, SCHEMA_TAG: SCHEMA, NAME_TAG: parent_name(row),
                "bench.method": row.method, "bench.readout": row.readout, "bench.dataset": row.dataset,
                "bench.data_fingerprint": row.fingerprint, "bench.protocol": row.protocol,
                "bench.n_folds": str(row.n_folds), "bench.row": row.label,
                "bench.overrides": json.dumps(row.overrides, sort_keys=True, default=repr),
                "bench.scale_defaults": json.dumps(row.scale_defaults, sort_keys=True, default=repr)}
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=parent_name(row))
        params = {k: v if isinstance(v, str) else json.dumps(v, default=repr) for k, v in row.params.items()}
        self._batch(run.info.run_id, params=params)
        self.client.log_inputs(run.info.run_id, [dataset_input(row.dataset, row.fingerprint)])
        self.client.set_terminated(run.info.run_id, "FINISHED", end_time=end)
        return run

    def _parent(self, row: Row, index: dict | None = None):
        run = index["groups"].get(row.id) if index is not None else self._parent_run(row)
        if run is None:
            run = self._create_parent(row)
            if index is not None:
                index["groups"][row.id] = run
        return run

    def _log_child(self, parent_id: str, row: Row, record: Record) -> None:
        cfg, env = record.config, record.environment
        tags = {KIND_TAG: "job", JOB_TAG: record.job_id, GROUP_TAG: row.id, PARENT_TAG: parent_id,
                RESULT_TAG: record.result_digest(), SCHEMA_TAG: SCHEMA, "bench.split_hash": cfg.split_hash,
                "bench.data_fingerprint": cfg.data_fingerprint, "bench.device": str(env.get("device", "")),
                "bench.code_version": str(env.get("code", "")), "bench.host": str(env.get("host", "")),
                "bench.finished_at": record.finished_at,
                "bench.environment": json.dumps(env, sort_keys=True, default=repr)[:_MAX_TAG]}
        if record.notes:
            tags["mlflow.note.content"] = "\n\n".join(record.notes)[:_MAX_TAG]
        start, end = record.span_ms()
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=child_name(record))
        run_id = run.info.run_id
        params = {"fold": cfg.fold, "seed": cfg.seed, "n_train": record.n_train, "n_test": record.n_test,
                  **{k: v for k, v in (cfg.params or {}).items() if k not in row.params}}
        metrics = child_metrics(record)
        if found := record.search:  # the in-fold search (bench.tuning): the values chosen and their score
            params.update({f"search.{k}": v for k, v in (found.get("chosen") or {}).items()})
            if isinstance(found.get("score"), int | float) and math.isfinite(found["score"]):
                metrics.append((f"search_val_{found.get('metric', '')}", float(found["score"]), 0))
        self._batch(run_id, params=params, metrics=metrics, timestamp=end)  # one call per job
        self.client.log_inputs(run_id, [dataset_input(cfg.dataset, cfg.data_fingerprint)])
        if record.per_label_ap is not None and record.label_names:
            self.client.log_dict(run_id, dict(zip(record.label_names, record.per_label_ap, strict=False)),
                                 "per_label_ap.json")
        self.client.set_terminated(run_id, "FINISHED", end_time=end)

    def _batch(self, run_id: str, params: dict | None = None, metrics: list | None = None,
               tags: dict | None = None, timestamp: int | None = None) -> None:
        """One ``log_batch`` call (MlflowClient splits it only beyond MLflow's per-request limits)."""
        from mlflow.entities import Metric, Param, RunTag

        ts = timestamp or int(time.time() * 1000)
        self.client.log_batch(
            run_id, metrics=[Metric(k, v, ts, step) for k, v, step in metrics or []],
            params=[Param(k, str(v)[:_MAX_PARAM]) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)[:_MAX_TAG]) for k, v in (tags or {}).items()])

    def _update_parent(self, parent, row: Row, results: Results) -> bool:
        """(Re)log the parent's aggregates and tags when its jobs or their results changed."""
        digest = jobs_digest(row)
        if parent.data.tags.get(JOBS_DIGEST_TAG) == digest and parent.data.tags.get(NAME_TAG) == parent_name(row):
            return False
        envs = [r.environment for r in row.records]
        n = len(row.records)
        tags = {JOBS_DIGEST_TAG: digest, RUNS_TAG: str(n), NAME_TAG: parent_name(row), "bench.row": row.label,
                "bench.code_version": _joined(e.get("code") for e in envs),
                "bench.device": _joined(e.get("device") for e in envs),
                "bench.split_hashes": _joined(r.config.split_hash for r in row.records)}
        self._batch(parent.info.run_id, metrics=[(k, v, n) for k, v in aggregates(results, row).items()], tags=tags)
        _, end = _span(row.records)
        self.client.set_terminated(parent.info.run_id, "FINISHED", end_time=end)
        parent.data.tags.update(tags)
        return True

    # ------------------------------------------------------------------ entry points
    def _is_logged(self, record: Record, runs: list) -> bool:
        """True when one of ``runs`` (the job's active children) holds this very result; the others
        (an older result replaced by ``--force``, a duplicate an older bench made) are deleted."""
        digest = record.result_digest()
        keep = next((r for r in runs if r.data.tags.get(RESULT_TAG) == digest), None)
        for run in runs:
            if run is not keep:
                self.client.delete_run(run.info.run_id)
        return keep is not None

    @warn_once
    def log_job(self, record: dict | Record) -> None:
        """Log one finished job as a child run, as the orchestrator receives it (its parent's
        aggregates come with :meth:`sync` at the end of the command)."""
        record = record if isinstance(record, Record) else Record.from_dict(record)
        row = next(r for r in rows_of([record]) if not r.readout)  # the method's own row
        with self.lock:
            if not self._is_logged(record, self._job_runs(record.job_id)):
                self._log_child(self._parent(row).info.run_id, row, record)

    def _index(self) -> dict:
        """The experiment's runs by role, read once (under the lock): ``jobs`` (job id -> runs),
        ``groups`` (row id -> parent), ``leaderboard`` (name -> run); ``legacy``: runs logged by an
        older bench."""
        index: dict = {"jobs": {}, "groups": {}, "leaderboard": {}, "legacy": []}
        for run in self._search():
            tags = run.data.tags
            kind = tags.get(KIND_TAG)
            if kind in ("job", "parent") and tags.get(SCHEMA_TAG) != SCHEMA:
                index["legacy"].append(run)
            elif kind == "job" and JOB_TAG in tags:
                index["jobs"].setdefault(tags[JOB_TAG], []).append(run)
            elif kind == "parent" and GROUP_TAG in tags:
                index["groups"].setdefault(tags[GROUP_TAG], run)
            elif kind == "leaderboard":
                index["leaderboard"].setdefault(tags.get(NAME_TAG, ""), run)
        return index

    @warn_once
    def sync(self, results: Results) -> dict[str, int]:
        """Log every job of ``results``' rows not yet in MLflow (or whose result changed) and bring
        the parents of those rows up to date: the aggregates are the results layer's, over every
        stored job of each row."""
        counts = {"jobs_logged": 0, "parents_updated": 0, "legacy_replaced": 0}
        with self.lock:
            index = self._index()
            for run in index["legacy"]:
                self.client.delete_run(run.info.run_id)
            counts["legacy_replaced"] = len(index["legacy"])
            for row in results.rows:
                parent = self._parent(row, index)
                if not row.readout:
                    for rec in row.records:
                        if not self._is_logged(rec, index["jobs"].get(rec.job_id, [])):
                            self._log_child(parent.info.run_id, row, rec)
                            counts["jobs_logged"] += 1
                counts["parents_updated"] += self._update_parent(parent, row, results)
        if counts["legacy_replaced"]:
            log.info("replaced %d MLflow run(s) logged by an older bench", counts["legacy_replaced"])
        return counts

    @warn_once
    def log_report(self, files: Iterable[Path] = (), figures: Iterable = (), tables: Iterable = ()) -> str:
        """Tables and figures to the ``leaderboard`` run and to the parent runs they concern.

        ``files``: written tables (``<dataset>__...`` files also go to that dataset's parents);
        ``figures``: saved :class:`bench.plots.Plot` objects, to the leaderboard and to the parents
        of their dataset and rows (the PNG/PDF files :func:`bench.plots.save` wrote: what
        ``log_figure`` would store, without drawing each figure once more per run);
        ``tables``: :class:`bench.tables.Table` objects, logged with ``log_table`` as JSON.
        """
        with self.lock:
            index = self._index()
            board = self._leaderboard(index)
            parents = list(index["groups"].values())
            for path in map(Path, files):
                folder = "figures" if path.suffix.lower() in (".png", ".pdf", ".svg") else "tables"
                self.client.log_artifact(board, str(path), folder)
                for parent in parents:
                    if path.name.startswith(f"{parent.data.tags.get('bench.dataset')}__"):
                        self.client.log_artifact(parent.info.run_id, str(path), folder)
            for plot in figures:
                runs = [board] + [p.info.run_id for p in parents if p.data.tags.get("bench.dataset") == plot.dataset
                                  and p.data.tags.get("bench.row") in plot.rows]
                for run_id in runs:
                    for path in plot.paths:
                        self.client.log_artifact(run_id, str(path), "figures")
            for table in tables:
                self.client.log_table(board, _table_frame(table), f"tables/{table.slug}.json")
            self.client.set_terminated(board, "FINISHED")
        return board

    def _leaderboard(self, index: dict) -> str:
        run = index["leaderboard"].get("leaderboard")
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name="leaderboard",
                                         tags={KIND_TAG: "leaderboard", NAME_TAG: "leaderboard"})
        return run.info.run_id


def dataset_input(name: str, fingerprint: str):
    """The run's dataset as an MLflow dataset input (the runs list's Dataset column): its name and
    data fingerprint as the digest."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source = json.dumps({"bench_dataset": name, "data_fingerprint": fingerprint})
    return DatasetInput(Dataset(name=name, digest=fingerprint[:_MAX_DIGEST] or "unknown", source_type="code",
                                source=source),
                        tags=[InputTag("mlflow.data.context", "training")])


def aggregates(results: Results, row: Row) -> dict[str, float]:
    """``<metric>_mean`` / ``<metric>_std`` and ``n_runs`` of a row: the results layer's cells."""
    out = {"n_runs": float(len(row.records))}
    names = dict.fromkeys(k for rec in row.records for k in row.metrics_of(rec))
    for name in names:
        mean, std = results.mean.at[row.id, name], results.std.at[row.id, name]
        if math.isfinite(mean):
            out[f"{metric_key(name)}_mean"] = float(mean)
        if math.isfinite(std):
            out[f"{metric_key(name)}_std"] = float(std)
    return out


def _table_frame(table):
    """A report table as one tidy frame (row, metric mean and std columns) for ``log_table``."""
    mean, std = table.mean, table.std
    frame = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    frame = frame[[c for m in mean.columns for c in (f"{m}_mean", f"{m}_std")]]
    return frame.rename_axis("row").reset_index()


# --------------------------------------------------------------------------- SQLite repairs
def _count_runs(db: Path) -> int:
    """Runs in an MLflow SQLite database (0 when it has no ``runs`` table yet)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            if not con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='runs'").fetchone():
                return 0
            return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.Error:
        return 0  # not even a database: nothing in it to keep


def _discard_sqlite(uri: str, db: Path) -> None:
    """Remove a run-less, half-created database (and forget MLflow's cached engine for it)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)
        if engine is not None:
            engine.dispose()
    except ImportError:  # pragma: no cover - another MLflow layout: nothing cached to forget
        pass
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def _forget_artifact_locations() -> None:
    """Drop MLflow's in-process cache of each run's artifact repository (keyed by run id: a copied
    store has the same run ids as its original)."""
    from mlflow.tracking._tracking_service import utils

    cache = getattr(utils, "_artifact_repos_cache", None)
    if cache is not None:
        cache.clear()


#: The columns of an MLflow SQLite database that hold artifact locations.
_ARTIFACT_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"))


def _replace_prefix(db: Path, old: str, new: str) -> int:
    """Rewrite every artifact location under ``old`` to the same place under ``new``."""
    changed = 0
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for table, column in _ARTIFACT_COLUMNS:
            if table not in tables:
                continue
            for rowid, value in con.execute(f"SELECT rowid, {column} FROM {table}").fetchall():
                if value and (value == old or value.startswith(old + "/")):
                    con.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (new + value[len(old):], rowid))
                    changed += 1
    return changed
