"""MLflow tracking: the results store mirrored into an MLflow experiment, idempotently.

The results store (:mod:`bench.store`) is the source of truth; MLflow is a view of it for
``mlflow ui``. Layout, one experiment per benchmark (``bench`` unless ``MLFLOW_EXPERIMENT_NAME``):

* a **parent run** per table row and dataset: (method, hyper-parameter overrides, dataset, protocol,
  folds), holding the hyper-parameters as params, tags (code version(s), split hash(es), device(s))
  and ``<metric>_mean`` / ``<metric>_std`` (sample std, the tables' ddof) plus ``n_runs``. The
  aggregates are logged with ``step = n_runs``, so when a resumed run adds folds the latest value
  (MLflow shows the highest step) is the aggregate over every stored fold, and the history shows
  how it moved;
* a nested **child run** per job (fold/seed), tagged ``bench.job_id``: the fold's metrics, timings,
  per-label AP (``per_label_ap.json``), the per-epoch curves of the method's ``history_``
  (``log_metric(key, value, step=epoch)``) and, for methods with ``predict_steps``, the metrics
  after each modality as ``steps/<metric>`` with ``step = number of modalities used``;
* a **leaderboard** run holding every table (Markdown/LaTeX files and ``log_table`` JSON) and figure.

Idempotence: before logging, the experiment's runs are indexed by their ``bench.job_id`` and
``bench.group`` tags; a job already present is never logged again and a parent's aggregates are
re-logged only when its set of jobs changed, so ``bench run`` after a resume and ``bench report``
(which calls :meth:`Tracker.sync` on the whole store) never duplicate runs.

Only the orchestrating process writes (SQLite locks against parallel writers); workers return
records. MLflow is imported lazily (it takes seconds), and a logging failure is one warning line:
the results are already stored and ``bench report`` re-syncs them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import numpy as np

from bench.api import PER_RUN_PARAMS
from bench.report import DDOF, current_records, history_points, row_label
from bench.store import ResultStore

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "bench"
KIND_TAG, JOB_TAG, GROUP_TAG, RUNS_TAG, JOBS_DIGEST_TAG = (
    "bench.kind", "bench.job_id", "bench.group", "bench.n_runs", "bench.jobs_digest")
PARENT_TAG = "mlflow.parentRunId"
NAME_TAG = "mlflow.runName"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
_MAX_TAG = 5000


def tracking_enabled(no_mlflow: bool = False) -> bool:
    """False with ``--no-mlflow`` or ``BENCH_MLFLOW=0`` (the test suite sets it)."""
    return not no_mlflow and os.environ.get("BENCH_MLFLOW", "1").strip().lower() not in ("0", "false", "no", "off")


def default_tracking_uri(results_root: Path | str) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite store next to the results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(results_root).resolve() / 'mlflow.db'}"


def default_artifact_root(uri: str) -> str | None:
    """``<folder of the SQLite file>/mlartifacts`` for a local SQLite store; a server decides itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def group_of(record: dict) -> dict:
    """The identity of a record's parent run: one row of one dataset's table."""
    cfg = record["config"]
    return {"method": cfg["method"], "overrides": record.get("overrides") or {}, "dataset": cfg["dataset"],
            "protocol": cfg["protocol"], "n_folds": cfg["n_folds"]}


def group_id(record: dict) -> str:
    text = json.dumps(group_of(record), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def parent_name(record: dict) -> str:
    cfg = record["config"]
    proto = f"kfold{cfg['n_folds']}" if cfg["protocol"] == "kfold" else cfg["protocol"]
    return f"{row_label(record)} · {cfg['dataset']} · {proto}"


def child_name(record: dict) -> str:
    cfg = record["config"]
    return f"fold {cfg['fold']} seed {cfg['seed']}" if cfg["protocol"] == "kfold" else f"seed {cfg['seed']}"


def metric_key(name: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / :`` and spaces; anything else becomes ``_``."""
    return re.sub(r"[^\w\-./: ]", "_", str(name)) or "_"


def aggregate(records: list[dict]) -> dict[str, float]:
    """``<metric>_mean`` / ``<metric>_std`` over the records (NaN entries left out, as in the tables)."""
    out = {"n_runs": float(len(records))}
    names = dict.fromkeys(k for r in records for k in r["metrics"])
    for name in names:
        values = np.array([r["metrics"].get(name, np.nan) for r in records], dtype=float)
        values = values[np.isfinite(values)]
        if values.size:
            out[f"{metric_key(name)}_mean"] = float(values.mean())
            if values.size > DDOF:
                out[f"{metric_key(name)}_std"] = float(values.std(ddof=DDOF))
    return out


def history_metrics(record: dict) -> list[tuple[str, float, int]]:
    """(key, value, epoch) for every numeric entry of the record's per-epoch history."""
    return [(metric_key(key), value, epoch) for key, value, epoch in history_points(record)]


def step_metrics(record: dict) -> list[tuple[str, float, int]]:
    """(``steps/<metric>``, value, number of modalities used) from ``predict_steps`` evaluations."""
    return [(f"steps/{metric_key(k)}", float(v), t) for t, entry in enumerate(record.get("step_metrics") or [], 1)
            for k, v in entry.items() if isinstance(v, int | float)]


def _digest(records: Iterable[dict]) -> str:
    """Which results a parent aggregates: job ids and when each was stored (``--force`` re-runs)."""
    keys = sorted(f"{r['job_id']}@{r.get('finished_at', '')}" for r in records)
    return hashlib.sha256(",".join(keys).encode()).hexdigest()[:16]


def _joined(values: Iterable) -> str:
    return ",".join(sorted({str(v) for v in values if v not in (None, "")}))[:_MAX_TAG]


def _millis(record: dict) -> tuple[int | None, int | None]:
    """(start, end) of the job in epoch milliseconds, from ``finished_at`` and its timings."""
    try:
        end = datetime.strptime(record["finished_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (KeyError, ValueError):
        return None, None
    spent = sum(float(v) for v in (record.get("timings") or {}).values())
    return int((end - spent) * 1000), int(end * 1000)


def warn_once(fn):
    """Run a logging entry point; on failure warn in one line and switch tracking off for the command."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self.disabled:
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:  # MLflow down, locked DB, bad URI: never lose or fail a finished run
            self.disabled = True
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            log.warning("MLflow logging to %s failed (%s: %s); results are safe in the store, "
                        "`bench report` re-syncs them", self.uri, type(exc).__name__, first_line)
            return None

    return wrapper


class Tracker:
    """Mirror of a results store in one MLflow experiment (see the module docstring)."""

    def __init__(self, uri: str, experiment: str | None = None, artifact_root: str | None = None):
        self.uri = uri
        self.experiment = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.artifact_root = artifact_root if artifact_root is not None else default_artifact_root(uri)
        self.disabled = False
        self._index: dict[str, dict[str, object]] | None = None

    @classmethod
    def for_results(cls, results_root: Path | str, uri: str | None = None) -> Tracker:
        return cls(uri or default_tracking_uri(results_root))

    # ------------------------------------------------------------------ MLflow handles
    @functools.cached_property
    def client(self):
        for noisy in ("mlflow", "alembic"):  # "Creating initial MLflow database tables..." on every new store
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)

    @functools.cached_property
    def experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_root,
                                                 tags={"mlflow.note.content": "bench: multi-label benchmark runs"})
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def index(self) -> dict[str, dict[str, object]]:
        """Runs of the experiment by role: ``jobs`` (job id -> run), ``groups`` (group id -> run),
        ``leaderboard`` (name -> run). Read once per command, then kept up to date in memory."""
        if self._index is None:
            index: dict[str, dict[str, object]] = {"jobs": {}, "groups": {}, "leaderboard": {}}
            token = None
            while True:
                page = self.client.search_runs([self.experiment_id], max_results=1000, page_token=token)
                for run in page:
                    tags = run.data.tags
                    kind = tags.get(KIND_TAG)
                    if kind == "job" and JOB_TAG in tags:
                        index["jobs"].setdefault(tags[JOB_TAG], run)
                    elif kind == "parent" and GROUP_TAG in tags:
                        index["groups"].setdefault(tags[GROUP_TAG], run)
                    elif kind == "leaderboard":
                        index["leaderboard"].setdefault(tags.get(NAME_TAG, ""), run)
                token = page.token
                if not token:
                    break
            self._index = index
        return self._index

    # ------------------------------------------------------------------ runs
    def _parent(self, record: dict):
        """The parent run of the record's group, created (with params and fixed tags) if missing."""
        gid = group_id(record)
        run = self.index()["groups"].get(gid)
        if run is not None:
            return run
        cfg = record["config"]
        tags = {KIND_TAG: "parent", GROUP_TAG: gid, NAME_TAG: parent_name(record), "bench.method": cfg["method"],
                "bench.dataset": cfg["dataset"], "bench.protocol": cfg["protocol"],
                "bench.n_folds": str(cfg["n_folds"]), "bench.row": row_label(record),
                "bench.overrides": json.dumps(record.get("overrides") or {}, sort_keys=True, default=repr)}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=parent_name(record))
        params = {k: v for k, v in cfg["params"].items() if k not in PER_RUN_PARAMS}
        self._log(run.info.run_id, params={k: json.dumps(v, default=repr) if not isinstance(v, str) else v
                                           for k, v in params.items()})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        self.index()["groups"][gid] = run
        return run

    def _child(self, parent_id: str, record: dict) -> None:
        cfg, env = record["config"], record.get("environment") or {}
        tags = {KIND_TAG: "job", JOB_TAG: record["job_id"], GROUP_TAG: group_id(record), PARENT_TAG: parent_id,
                "bench.split_hash": cfg["split_hash"], "bench.data_fingerprint": cfg.get("data_fingerprint", ""),
                "bench.device": str(env.get("device", "")), "bench.code_version": str(env.get("code", "")),
                "bench.host": str(env.get("host", "")), "bench.finished_at": record.get("finished_at", "")}
        if record.get("notes"):
            tags["mlflow.note.content"] = "\n\n".join(record["notes"])[:_MAX_TAG]
        start, end = _millis(record)
        run = self.client.create_run(self.experiment_id, start_time=start, tags=tags, run_name=child_name(record))
        run_id = run.info.run_id
        params = {"fold": cfg["fold"], "seed": cfg["seed"], "n_train": record.get("n_train"),
                  "n_test": record.get("n_test"), **{k: cfg["params"][k] for k in PER_RUN_PARAMS if k in cfg["params"]}}
        metrics = [(metric_key(k), float(v), 0) for k, v in record["metrics"].items()]
        metrics += [(metric_key(k), float(v), 0) for k, v in (record.get("timings") or {}).items()]
        self._log(run_id, params={k: str(v) for k, v in params.items()},
                  metrics=metrics + history_metrics(record) + step_metrics(record), timestamp=end)
        if record.get("per_label_ap") is not None and record.get("label_names"):
            self.client.log_dict(run_id, dict(zip(record["label_names"], record["per_label_ap"], strict=False)),
                                 "per_label_ap.json")
        self.client.set_terminated(run_id, "FINISHED", end_time=end)
        self.index()["jobs"][record["job_id"]] = run

    def _log(self, run_id: str, params: dict | None = None, metrics: list | None = None,
             timestamp: int | None = None) -> None:
        from mlflow.entities import Metric, Param

        ts = timestamp or int(time.time() * 1000)
        param_list = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        metric_list = [Metric(k, v, ts, step) for k, v, step in metrics or []]
        for i in range(0, len(param_list), 100):  # log_batch limits: 100 params, 1000 metrics
            self.client.log_batch(run_id, params=param_list[i:i + 100])
        for i in range(0, len(metric_list), _BATCH):
            self.client.log_batch(run_id, metrics=metric_list[i:i + _BATCH])

    def _update_parent(self, parent, records: list[dict]) -> bool:
        """(Re)log the parent's aggregates and tags when its set of jobs changed; True if it did."""
        digest = _digest(records)
        if parent.data.tags.get(JOBS_DIGEST_TAG) == digest:
            return False
        run_id = parent.info.run_id
        envs = [r.get("environment") or {} for r in records]
        tags = {JOBS_DIGEST_TAG: digest, RUNS_TAG: str(len(records)),
                "bench.code_version": _joined(e.get("code") for e in envs),
                "bench.device": _joined(e.get("device") for e in envs),
                "bench.split_hashes": _joined(r["config"]["split_hash"] for r in records)}
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self._log(run_id, metrics=[(k, v, len(records)) for k, v in aggregate(records).items()])
        parent.data.tags.update(tags)
        return True

    # ------------------------------------------------------------------ entry points
    def _is_logged(self, record: dict) -> bool:
        """True if the job's child run holds this very result; a child of an older result of the
        same job (re-run with ``--force``) is deleted so that it is replaced, not duplicated."""
        run = self.index()["jobs"].get(record["job_id"])
        if run is None:
            return False
        if run.data.tags.get("bench.finished_at", "") == record.get("finished_at", ""):
            return True
        self.client.delete_run(run.info.run_id)
        del self.index()["jobs"][record["job_id"]]
        return False

    @warn_once
    def log_job(self, record: dict) -> None:
        """Log one finished job as a child run (called by the orchestrator as each job finishes)."""
        if not self._is_logged(record):
            self._child(self._parent(record).info.run_id, record)

    @warn_once
    def sync(self, store: ResultStore, records: Iterable[dict] | None = None) -> dict[str, int]:
        """Log every stored job not yet in MLflow and refresh the aggregates of the parents they
        belong to. ``records`` limits the sync to the groups (table rows) of those records; the
        aggregates are always computed over every stored job of a group."""
        if records is None:
            wanted = None
            pairs = [(None, None)]
        else:
            records = list(records)
            wanted = {group_id(r) for r in records}
            pairs = sorted({(r["config"]["dataset"], r["config"]["method"]) for r in records})
        groups: dict[str, list[dict]] = defaultdict(list)
        for dataset, method in pairs:
            for rec in current_records(store.records(dataset, method), warn=False):
                if wanted is None or group_id(rec) in wanted:
                    groups[group_id(rec)].append(rec)
        counts = {"jobs_logged": 0, "parents_updated": 0}
        for recs in groups.values():
            parent = self._parent(recs[0])
            for rec in recs:
                if not self._is_logged(rec):
                    self._child(parent.info.run_id, rec)
                    counts["jobs_logged"] += 1
            counts["parents_updated"] += self._update_parent(parent, recs)
        return counts

    @warn_once
    def log_report(self, files: Iterable[Path] = (), figures: Iterable = (), tables: Iterable = ()) -> str:
        """Tables and figures to the ``leaderboard`` run and to the parent runs they concern.

        ``files``: written tables (``<dataset>__...`` files also go to that dataset's parents);
        ``figures``: saved :class:`bench.plots.Plot` objects, to the leaderboard and to the parents
        of their dataset and rows (the PNG/PDF files :func:`bench.plots.save` wrote: what
        ``log_figure`` would store, without drawing each figure once more per run);
        ``tables``: objects with ``slug``, ``mean`` and ``std`` data frames, logged with
        ``log_table`` as JSON.
        """
        board = self._leaderboard()
        parents = list(self.index()["groups"].values())
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
            frame = _table_frame(table)
            if frame is not None:
                self.client.log_table(board, frame, f"tables/{table.slug}.json")
        self.client.set_terminated(board, "FINISHED")
        return board

    def _leaderboard(self) -> str:
        run = self.index()["leaderboard"].get("leaderboard")
        if run is None:
            run = self.client.create_run(self.experiment_id, run_name="leaderboard",
                                         tags={KIND_TAG: "leaderboard", NAME_TAG: "leaderboard"})
            self.index()["leaderboard"]["leaderboard"] = run
        return run.info.run_id


def _table_frame(table):
    """A report table as one tidy frame (row, metric mean and std columns) for ``log_table``."""
    mean, std = getattr(table, "mean", None), getattr(table, "std", None)
    if mean is None or std is None or not hasattr(table, "slug"):
        return None
    frame = mean.add_suffix("_mean").join(std.add_suffix("_std"))
    frame = frame[[c for m in mean.columns for c in (f"{m}_mean", f"{m}_std")]]
    return frame.rename_axis("row").reset_index()
