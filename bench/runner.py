"""The orchestrator: builds the grid of jobs and dispatches the ones not yet stored.

A job is one (method, resolved hyper-parameters, dataset@fingerprint, protocol, fold, seed); its
id is the hash of that full configuration plus the digest of the split's indices. Jobs already in
the results store are skipped, so an interrupted command resumes where it stopped; ``force``
re-runs them. Hyper-parameters are resolved and validated in :mod:`bench.params`, and jobs run
through :mod:`bench.backends` (in-process, loky workers or Ray tasks; thread limits, devices).

A job carries only plain data (names, parameters, indices); the worker re-reads the plug-in by
name, so no dynamically imported class ever needs pickling. A task is one job, or the pending
folds of a method that trains them together (:func:`group_jobs`, :mod:`bench.stacked`); a worker
returns each job's record and arrays, and this process alone writes them to the results store
(atomically, one job per file pair) and hands the record on (MLflow). A job that runs out of GPU
memory is retried once at half its ``batch_size`` (:func:`_fit_retrying_oom`). Derived
views (features of a frozen CNN for a feature-only method on an image-only dataset) are prepared
here once per dataset before any job starts (:mod:`bench.image_features`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import random
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from bench import backends, image_features, params, plugins, tuning
from bench.api import EXECUTION_PARAMS, Method, NoClassMaps
from bench.backends import resolve_device  # noqa: F401  (part of the runner's interface)
from bench.data import MultiLabelData
from bench.errors import BenchError, one_line
from bench.metrics import evaluate
from bench.params import parse_overrides, resolve_params  # noqa: F401  (used through the runner)
from bench.protocols import Split, make_splits
from bench.store import ResultStore

log = logging.getLogger(__name__)

#: A test fold smaller than this gets a warning: its metrics are noisy and some are undefined.
MIN_TEST_EXAMPLES = 10
#: The distributions whose versions are recorded with each job when their module is imported.
LIBRARIES = {"numpy": "numpy", "scipy": "scipy", "scikit-learn": "sklearn", "iterative-stratification": "iterstrat",
             "torch": "torch", "torchvision": "torchvision", "mlflow": "mlflow", "pandas": "pandas",
             "threadpoolctl": "threadpoolctl"}
READOUT_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: The first test images of a job whose class maps (``Method.class_maps``) it stores, for the
#: report's map figures (DER Figs. 2 and 8); only these are computed, so storing them costs little.
CLASS_MAP_IMAGES = 4


# --------------------------------------------------------------------------- jobs
@dataclass(frozen=True, eq=False)
class Job:
    method: str
    dataset: str
    params: dict
    overrides: dict
    split: Split
    data_fingerprint: str
    data_root: str = ""
    store_root: str = ""
    scale_defaults: dict = field(default_factory=dict)  # the dataset-scale settings applied (bench.params)
    paper_defaults: bool = False  # run with --paper-defaults (recorded; not part of the identity)
    extractor: str = ""  # the frozen CNN of derived feature views ("" : the dataset's own views)
    threads: int = 0  # the thread limit the job runs under (0: the cores of this machine)
    views_file: str = ""  # derived feature views extracted by the orchestrator (image_features)
    smoke: bool = False  # bench run --smoke: a tiny schedule (bench.params.SMOKE_SCHEDULE), not a result
    search: dict = field(default_factory=dict)  # the in-fold search (bench.tuning; {}: none)
    # Where the worker finds plug-ins: the orchestrator's BENCH_PLUGIN_PATH (not part of the identity).
    plugin_path: str = field(default_factory=lambda: os.environ.get("BENCH_PLUGIN_PATH", ""))
    config: dict = field(init=False)
    job_id: str = field(init=False)

    def __post_init__(self):
        identity = {k: v for k, v in self.params.items() if k not in EXECUTION_PARAMS}
        config = {
            "method": self.method,
            "dataset": self.dataset,
            "params": identity,
            "protocol": self.split.protocol,
            "n_folds": self.split.n_folds,
            "fold": self.split.fold,
            "seed": self.split.seed,
            "split_hash": self.split.hash,
            "data_fingerprint": self.data_fingerprint,
        }
        if self.scale_defaults:  # absent when none applied, so earlier jobs keep their ids
            config["scale_defaults"] = dict(self.scale_defaults)
        if self.smoke:  # likewise absent for real jobs; a smoke job never shares a real one's id
            config["smoke"] = True
        if self.search:  # the search is the row's identity, not the values it chooses (bench.tuning)
            config["search"] = self.search
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=repr).encode()).hexdigest()
        object.__setattr__(self, "config", config)
        object.__setattr__(self, "job_id", digest[:16])

    def describe(self) -> str:
        return f"{self.method} on {self.dataset} ({self.split.protocol} seed {self.split.seed} fold {self.split.fold})"

    @property
    def uses_torch(self) -> bool:
        """A method with a ``device`` parameter runs on torch (and may want a GPU); others never do."""
        return "device" in self.params

    def failure(self, error: str, trace: str | None = None) -> dict:
        """The record of this job when it failed: what the run summary and the error report read."""
        return {"job_id": self.job_id, "job": self.describe(), "error": error,
                **({"traceback": trace} if trace is not None else {})}


@functools.lru_cache(maxsize=2)
def load_dataset(name: str, data_root: str) -> MultiLabelData:
    """Load a dataset once per process (workers run many folds of the same dataset)."""
    data = plugins.get("datasets", name)().load(Path(data_root))
    if not isinstance(data, MultiLabelData):
        raise BenchError(f"dataset plug-in {name!r} returned {type(data).__name__}, expected MultiLabelData")
    return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


@functools.cache
def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=plugins.project_root(),
            capture_output=True, text=True, timeout=5,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _environment(device: str, threads: dict) -> dict:
    """Where a job ran: host, device, code version, the thread limits it ran under, the machine's
    load (its timings depend on it) and the versions of the libraries its numbers depend on (those
    imported by then)."""
    env = {"python": platform.python_version(), "host": platform.node(), "machine": platform.machine(),
           "cpus": backends.available_cores(), "load": round(backends.busy_cores(), 2), "device": device,
           "code": code_version(), "threads": threads, "libraries": library_versions()}
    torch = sys.modules.get("torch")
    if torch is not None and device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def library_versions() -> dict[str, str]:
    """``{distribution: version}`` of the :data:`LIBRARIES` whose module this process imported."""
    out = {}
    for dist, module in LIBRARIES.items():
        if module in sys.modules:
            try:
                out[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                out[dist] = str(getattr(sys.modules[module], "__version__", "unknown"))
    return out


def _check_scores(method: str, what: str, scores, shape: tuple[int, int], in_unit_interval: bool = False) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != shape:
        raise BenchError(f"method {method!r}: {what} returned shape {scores.shape}, expected {shape}")
    if not np.isfinite(scores).all():
        raise BenchError(f"method {method!r}: {what} returned NaN/inf")
    if in_unit_interval and scores.size and (scores.min() < 0 or scores.max() > 1):
        raise BenchError(f"method {method!r}: {what} returned scores outside [0, 1] "
                         f"(min {scores.min():g}, max {scores.max():g})")
    return scores


def _check_predictions(method: str, y_pred, shape: tuple[int, int]) -> np.ndarray:
    y_pred = np.asarray(y_pred)
    if y_pred.shape != shape or not np.isin(y_pred, (0, 1)).all():
        raise BenchError(f"method {method!r}: predict must return a 0/1 array of shape {shape}")
    return y_pred.astype(np.uint8)


def _evaluated(result) -> dict:
    """The stored form of one :func:`evaluate` result."""
    return {"metrics": dict(result), "per_label_ap": result.per_label_ap, "undefined": result.undefined}


def execute(job: Job, device: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Train and evaluate one job; its record and arrays (runs in a worker; the orchestrating
    process stores them)."""
    part = _JobPart.of(job, device)
    with backends.thread_limits(job.threads or backends.threads_per_job(1)) as threads:
        searched = {}

        def fit(job_params):  # with a search: each candidate on the training part's carve-out
            method, searched["record"] = tuning.fit(part.cls, job_params, part.train, job.search,
                                                    lambda: seed_everything(job.split.seed))
            return [method]

        t0 = time.perf_counter()
        (method,), params_used = _fit_retrying_oom([job], part.params, fit)
        fit_s = time.perf_counter() - t0
        return part.finish(method, {"fit_s": fit_s}, threads, params_used, searched.get("record"))


def execute_folds(jobs: Sequence[Job], device: str) -> list[tuple[dict, dict[str, np.ndarray]]]:
    """Train the folds of one method (``jobs``: the same configuration but for the fold) as one
    stacked model (:mod:`bench.stacked`), then evaluate each fold: one record per fold, as
    :func:`execute` gives it, with the stacked training's time shared out in ``timings``."""
    from bench.stacked import fit_folds

    parts = [_JobPart.of(job, device) for job in jobs]
    with backends.thread_limits(jobs[0].threads or backends.threads_per_job(1)) as threads:
        def fit(job_params):
            seed_everything(jobs[0].split.seed)
            return fit_folds([p.cls(**job_params) for p in parts], [p.train for p in parts],
                             cuda_graph=backends.single_device(device).startswith("cuda"))

        t0 = time.perf_counter()
        methods, params_used = _fit_retrying_oom(jobs, parts[0].params, fit)
        shared_s = time.perf_counter() - t0
        timings = {"fit_s": shared_s / len(jobs), "fit_stacked_s": shared_s, "stacked_folds": len(jobs)}
        return [p.finish(m, dict(timings), threads, params_used) for p, m in zip(parts, methods, strict=True)]


@dataclass
class _JobPart:
    """One job's data and plug-in, ready to fit (in the worker)."""

    job: Job
    cls: type
    data: MultiLabelData
    train: MultiLabelData
    test: MultiLabelData
    params: dict
    notes: list[str]
    device: str

    @classmethod
    def of(cls, job: Job, device: str) -> _JobPart:
        if plugins.use_plugin_path(job.plugin_path):  # a reused worker of an earlier run
            load_dataset.cache_clear()
        method_cls = plugins.get("methods", job.method)  # imports the method's file (and torch, if it uses it)
        data = load_dataset(job.dataset, job.data_root)
        if job.extractor:  # a feature-only method on an image-only dataset: the cached CNN features
            data = image_features.with_views(data, job.views_file)
        train_index, test_index = job.split.train, job.split.test
        if job.smoke:  # a check of the set-up, not a result: a few examples suffice
            train_index, test_index = train_index[:params.SMOKE_EXAMPLES], test_index[:params.SMOKE_EXAMPLES]
        train, test = data.subset(train_index), data.subset(test_index)
        job_params = dict(job.params)
        if "device" in job_params:
            job_params["device"] = device
        return cls(job, method_cls, data, train, test, job_params, _empty_label_notes(job, data, train), device)

    def finish(self, method: Method, timings: dict, threads: dict, params_used: dict, search: dict | None = None
               ) -> tuple[dict, dict[str, np.ndarray]]:
        """Predict, evaluate and build the record and arrays of the fitted ``method``."""
        job, test, name = self.job, self.test, self.job.method
        t1 = time.perf_counter()
        scores = _check_scores(name, "predict_scores", method.predict_scores(test), test.Y.shape)
        y_pred = _check_predictions(name, method.predict(test), test.Y.shape)
        t2 = time.perf_counter()
        readouts = _readouts(name, method, test)
        steps = _step_scores(name, method, test)
        t3 = time.perf_counter()
        maps = _class_maps(name, method, test)
        t4 = time.perf_counter()
        environment = _environment(self.device, threads)
        result = evaluate(test.Y, scores, y_pred, ignore=test.ignore)
        notes = list(self.notes)
        changed = {k: v for k, v in params_used.items() if self.params.get(k) != v}
        if changed:
            notes.append(f"{job.describe()} was fitted with {changed} (its parameters: "
                         f"{ {k: self.params[k] for k in changed} }) after running out of GPU memory")
        record = {
            "job_id": job.job_id,
            "config": job.config,
            "overrides": job.overrides,
            "paper_defaults": job.paper_defaults,
            **_evaluated(result),
            "label_names": list(self.data.label_names),
            "n_train": int(self.train.n_samples),
            "n_test": int(test.n_samples),
            "timings": {**timings, "predict_s": t2 - t1,
                        **({"readouts_s": t3 - t2} if readouts or steps is not None else {}),
                        **({"class_maps_s": t4 - t3} if maps else {})},
            "history": list(getattr(method, "history_", []) or []),
            "notes": notes,
            "environment": environment,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if changed:
            record["fitted_with"] = changed
        if search is not None:  # every candidate's validation score and the choice (bench.tuning)
            record["search"] = search
        arrays = {"test_index": job.split.test, "scores": scores.astype(np.float32), "y_pred": y_pred}
        if readouts:  # other readouts of the same fitted model, thresholded like predict's default
            record["readouts"] = {k: _evaluated(evaluate(test.Y, s, (s >= method.threshold).astype(np.uint8),
                                                         ignore=test.ignore)) for k, s in readouts.items()}
            arrays.update({f"readout__{k}": s.astype(np.float32) for k, s in readouts.items()})
        if steps is not None:
            # The metrics after each modality / step (RMLC Fig. 3), thresholded like predict's default.
            record["step_metrics"] = [dict(evaluate(test.Y, s, (s >= method.threshold).astype(np.uint8),
                                                    ignore=test.ignore)) for s in steps]
            arrays["step_scores"] = steps.astype(np.float32)
        arrays.update(maps)
        return record, arrays


def _is_cuda_oom(exc: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _fit_retrying_oom(jobs: Sequence[Job], job_params: dict, fit) -> tuple[list, dict]:
    """``fit(job_params)``; when it runs out of GPU memory and the method has a ``batch_size``,
    one line saying so and one more try at half the batch size. Returns what ``fit`` returned and
    the parameters it was given."""
    what = jobs[0].describe() if len(jobs) == 1 else f"{len(jobs)} folds of {jobs[0].describe()}"
    try:
        return fit(job_params), job_params
    except Exception as exc:
        if not _is_cuda_oom(exc):
            raise
        size = job_params.get("batch_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 2:
            at = f" at batch_size {size}" if size is not None else ""
            raise BenchError(f"{what}: CUDA out of memory{at} (no batch_size to halve)") from exc
    _free_cuda_memory()
    half = dict(job_params, batch_size=size // 2)
    log.warning("%s: CUDA out of memory at batch_size %d; retrying once at batch_size %d", what, size, size // 2)
    try:
        return fit(half), half
    except Exception as exc:
        if _is_cuda_oom(exc):
            raise BenchError(f"{what}: CUDA out of memory at batch_size {size // 2} (retried after {size})") from exc
        raise


def _free_cuda_memory() -> None:
    import gc

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _empty_label_notes(job: Job, data: MultiLabelData, train: MultiLabelData) -> list[str]:
    empty = np.flatnonzero(train.Y.sum(axis=0) == 0)
    if not empty.size:
        return []
    names = [data.label_names[i] for i in empty]
    return [f"label(s) {names} have no positive example in the training part of {job.describe()}; "
            "the method sees an all-negative column (scored as it predicts; undefined test metrics are "
            "left out of macro averages and counted)"]


def _readouts(name: str, method: Method, test: MultiLabelData) -> dict[str, np.ndarray]:
    """The optional ``predict_readouts`` output, checked: short lowercase names, [n, L] in [0, 1]."""
    predict_readouts = getattr(method, "predict_readouts", None)
    if not callable(predict_readouts):
        return {}
    readouts = predict_readouts(test)
    if not isinstance(readouts, dict):
        raise BenchError(f"method {name!r}: predict_readouts must return a dict of name -> scores, "
                         f"got {type(readouts).__name__}")
    out = {}
    for key, scores in readouts.items():
        if not (isinstance(key, str) and READOUT_NAME.match(key)):
            raise BenchError(f"method {name!r}: readout name {key!r} must be a short lowercase identifier")
        out[key] = _check_scores(name, f"predict_readouts[{key!r}]", scores, test.Y.shape, in_unit_interval=True)
    return out


def _step_scores(name: str, method: Method, test: MultiLabelData) -> np.ndarray | None:
    """The optional ``predict_steps`` output, checked: float [M, n, L], finite, M >= 1."""
    predict_steps = getattr(method, "predict_steps", None)
    if not callable(predict_steps):
        return None
    steps = np.asarray(predict_steps(test), dtype=np.float64)
    if steps.ndim != 3 or steps.shape[0] < 1 or steps.shape[1:] != test.Y.shape:
        raise BenchError(f"method {name!r}: predict_steps returned shape {steps.shape}, "
                         f"expected [M, {test.Y.shape[0]}, {test.Y.shape[1]}]")
    if not np.isfinite(steps).all():
        raise BenchError(f"method {name!r}: predict_steps returned NaN/inf")
    return steps


def _class_maps(name: str, method: Method, test: MultiLabelData) -> dict[str, np.ndarray]:
    """The arrays a job stores for the class-map figures: the optional ``class_maps`` of the first
    :data:`CLASS_MAP_IMAGES` test images (checked: [k, L, h, w], finite, >= 0; float16), their RGB
    thumbnails and their true labels. Empty when the method has no class maps or the test part no
    image view."""
    class_maps = getattr(method, "class_maps", None)
    if not callable(class_maps) or test.image_view is None:
        return {}
    first = test.subset(np.arange(min(CLASS_MAP_IMAGES, test.n_samples)))
    try:
        maps = np.asarray(class_maps(first), dtype=np.float64)
    except NoClassMaps:  # a network without maps (a DeepMethod whose head gives none)
        return {}
    if maps.ndim != 4 or maps.shape[:2] != first.Y.shape:
        raise BenchError(f"method {name!r}: class_maps returned shape {maps.shape}, expected "
                         f"[{first.n_samples}, {first.n_labels}, h, w]")
    if not np.isfinite(maps).all():
        raise BenchError(f"method {name!r}: class_maps returned NaN/inf")
    if maps.size and maps.min() < 0:
        raise BenchError(f"method {name!r}: class_maps returned negative values (min {maps.min():g}); "
                         "maps must be >= 0")
    from bench.image import thumbnails  # torch and torchvision: only for methods with class maps

    images, sizes = thumbnails(first.image_view)
    return {"class_maps": maps.astype(np.float16), "class_map_images": images, "class_map_image_sizes": sizes,
            "class_map_labels": first.Y.astype(np.uint8)}


def run_task(task: Sequence[Job], device) -> list[tuple[dict, dict | None]]:
    """Run one task in a worker: a single job, or the folds of one method trained together. Each
    job gives ``(record, arrays)``; a failure gives an error record (``error``) and no arrays, for
    every job of the task."""
    if not task[0].uses_torch:  # a method without torch holds no GPU
        device = "cpu"
    with backends.holding(device, [j.job_id for j in task]) as lease:
        try:
            if len(task) == 1:
                results = [execute(task[0], lease.device)]
            else:
                results = execute_folds(task, lease.device)
            for record, _ in results:
                record["environment"].update(lease.describe())
            return results
        except BenchError as exc:
            return [(j.failure(one_line(exc)), None) for j in task]
        except Exception as exc:  # a bug in one method must not lose the other jobs' results
            error, trace = one_line(exc, with_type=True), traceback.format_exc()
            return [(j.failure(error, trace), None) for j in task]


# --------------------------------------------------------------------------- orchestration
@dataclass
class RunSummary:
    records: list[dict]
    ran: int
    skipped: int
    failures: list[dict]


def build_jobs(
    methods: list[str], datasets: list[str], *, protocol: str | None, n_folds: int,
    seeds: tuple[int, ...] | None, overrides: dict, data_root: Path, store_root: Path,
    strict: bool = True, paper_defaults: bool = False, feature_extractor: str | None = None,
    smoke: bool = False, tune: dict | None = None,
) -> list[Job]:
    """Every job of the grid, each hyper-parameter checked before any job runs.

    An incompatible (method, dataset) pair, or a method whose file fails to import, is an error
    when ``strict``, else skipped with a warning (``--method all`` over mixed datasets). A dataset's ``scale_defaults`` apply unless
    ``paper_defaults``; ``feature_extractor`` (``"resnet101@448"``) chooses the frozen CNN of
    derived feature views; ``smoke`` makes smoke jobs (:data:`bench.params.SMOKE_SCHEDULE`);
    ``tune`` (``--tune``) adds to or overrides the methods' own in-fold searches (:mod:`bench.tuning`)."""
    classes = _method_classes(methods, strict)
    params.check_override_keys(overrides, classes)
    tuning.check_tune_keys(tune or {}, classes)
    extractor = image_features.Extractor.parse(feature_extractor) if feature_extractor else None
    jobs = []
    for ds_name in datasets:
        data = load_dataset(ds_name, str(data_root))
        splits = make_splits(data, protocol, n_folds, seeds)
        _warn_small_test_folds(data, splits)
        fingerprint = data.fingerprint()
        n_train = min(len(s.train) for s in splits)  # the smallest training part a job fits on
        if smoke:
            n_train = min(n_train, params.SMOKE_EXAMPLES)
        scale = {} if paper_defaults else dict(plugins.get("datasets", ds_name).scale_defaults)
        for cls in classes:
            try:
                views_from = image_features.plan(cls, data, extractor)
            except BenchError as exc:
                if strict:
                    raise
                log.warning("skipping: %s", exc)
                continue
            resolved = params.resolve(cls, overrides, scale, smoke)
            params.validate(cls, resolved, ds_name, data, n_train)
            search = tuning.search_for(cls, tune or {}, overrides)
            for candidate in tuning.candidates(search.get("grid", {})):  # every candidate, before any job
                try:
                    params.validate(cls, replace(resolved, params={**resolved.params, **candidate}), ds_name,
                                    data, n_train)
                except BenchError as exc:
                    raise BenchError(f"search candidate {candidate} of method {cls.name!r}: {exc}") from None
            for split in splits:
                job_params = resolved.params
                if "random_state" in job_params:
                    job_params = {**job_params, "random_state": split.seed}
                jobs.append(Job(cls.name, ds_name, job_params, resolved.overrides, split,
                                image_features.job_fingerprint(fingerprint, views_from), str(data_root),
                                str(store_root), resolved.scale_defaults, paper_defaults, str(views_from or ""),
                                smoke=smoke, search=search))
    return jobs


def _method_classes(methods: list[str], strict: bool) -> list[type]:
    """The methods' classes; with ``strict`` off (``--method all``) one whose file fails to import
    is skipped with a warning instead of stopping the run."""
    classes = []
    for name in methods:
        try:
            classes.append(plugins.get("methods", name))
        except BenchError as exc:
            if strict:
                raise
            log.warning("skipping: %s", exc)
    return classes


def _warn_small_test_folds(data: MultiLabelData, splits: list[Split]) -> None:
    smallest = min(len(s.test) for s in splits)
    if smallest < MIN_TEST_EXAMPLES:
        log.warning("dataset %r: %s test folds hold as few as %d examples (fewer than %d): their metrics are "
                    "noisy and partly undefined; use fewer folds", data.name, splits[0].protocol, smallest,
                    MIN_TEST_EXAMPLES)


STACK_FOLDS = ("auto", "on", "off")


def run_jobs(jobs: list[Job], *, device: str = "auto", n_jobs: int = 1, threads: int | None = None,
             force: bool = False, progress: bool = True, on_record=None, stack_folds: str = "auto",
             backend: str = "local", address: str | None = None) -> RunSummary:
    """Run the jobs not yet stored, ``n_jobs`` at a time, each under ``threads`` threads (default:
    the cores divided among the running jobs). ``on_record(record)`` is called in this (the
    orchestrating) process for each job as it finishes, e.g. to log it to MLflow; this process
    alone writes the results store.

    ``stack_folds``: train the folds of a method that supports it (:mod:`bench.stacked`) as one
    model: "auto" on CUDA, "on" everywhere, "off" never. ``backend``: "local" (this process or
    loky workers) or "ray" (Ray tasks; ``address`` an existing cluster, :mod:`bench.ray_backend`)."""
    if stack_folds not in STACK_FOLDS:
        raise BenchError(f"--stack-folds must be one of {', '.join(STACK_FOLDS)}, got {stack_folds!r}")
    if backend not in backends.BACKENDS:
        raise BenchError(f"--backend must be one of {', '.join(backends.BACKENDS)}, got {backend!r}")
    store = ResultStore(jobs[0].store_root) if jobs else None
    done, pending = [], []
    for job in jobs:
        record = None if force else store.load(job.dataset, job.method, job.job_id)
        if record is None:
            pending.append(job)
        else:
            done.append(record)
    needs_torch = any(j.uses_torch for j in pending)
    device = backends.resolve_device(device, needs_torch)
    tasks = group_jobs(pending, stack_folds == "on" or (stack_folds == "auto" and device.startswith("cuda")))
    n_jobs = max(1, min(n_jobs if n_jobs > 0 else backends.available_cores(), len(tasks) or 1))
    per_job = backends.threads_per_job(n_jobs, threads)
    views = {j.job_id: j for j in _with_derived_views(pending, device, threads)}
    tasks = [tuple(replace(views[j.job_id], threads=per_job) for j in task) for task in tasks]

    results = _dispatch(tasks, store, device, n_jobs, progress, on_record, backend, address)
    failures = [r for r in results if "error" in r]
    for rec in results:
        for note in rec.get("notes", []):
            log.warning(note)
    return RunSummary(done + [r for r in results if "error" not in r], len(pending), len(done), failures)


def group_jobs(pending: list[Job], stack: bool) -> list[tuple[Job, ...]]:
    """The tasks to run: with ``stack``, the pending folds of one method that can train them
    together (:func:`bench.stacked.supports_stacking`; same method, parameters, dataset, protocol
    and seed) form one task; every other job is a task of its own. Only pending jobs are grouped,
    so a rerun trains just the missing folds."""
    if not stack:
        return [(job,) for job in pending]
    from bench.stacked import supports_stacking

    groups: dict[str, list[Job]] = {}
    for job in pending:
        key = job.job_id
        if not job.search and supports_stacking(plugins.get("methods", job.method)):  # a search fits one fold
            key = json.dumps([{k: v for k, v in job.config.items() if k not in ("fold", "split_hash")},
                              job.data_root, job.extractor], sort_keys=True, default=repr)
        groups.setdefault(key, []).append(job)
    return [tuple(group) for group in groups.values()]


def _with_derived_views(pending: list[Job], device: str, threads: int | None) -> list[Job]:
    """Extract the derived feature views of each image-only dataset once, here, before any worker
    starts, and hand the jobs the cache file."""
    files: dict[tuple[str, str, str, str], str] = {}
    out = []
    for job in pending:
        if not job.extractor:
            out.append(job)
            continue
        key = (job.data_root, job.dataset, job.store_root, job.extractor)
        if key not in files:
            data = load_dataset(job.dataset, job.data_root)
            extractor = image_features.Extractor.parse(job.extractor)
            with backends.thread_limits(backends.threads_per_job(1, threads)):
                files[key] = str(image_features.cache_views(data, job.store_root, backends.single_device(device),
                                                            extractor))
        out.append(replace(job, views_file=files[key]))
    return out


def _dispatch(tasks: list[tuple[Job, ...]], store: ResultStore | None, device: str, n_jobs: int, progress: bool,
              on_record=None, backend: str = "local", address: str | None = None) -> list[dict]:
    """Run the tasks; as each one's results arrive, store them here (the workers only compute)
    and hand each record to ``on_record``."""
    if not tasks:
        return []
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(t) for t in tasks), desc="jobs", unit="job", disable=not progress, file=sys.stderr)
    out: list[dict] = []
    by_id = {job.job_id: job for task in tasks for job in task}

    def finished(results: list[tuple[dict, dict | None]]) -> None:
        for record, arrays in results:
            if arrays is not None:
                try:
                    store.write(record, arrays)
                except OSError as exc:
                    record = by_id[record["job_id"]].failure(f"could not store the result: {one_line(exc)}")
            out.append(record)
            bar.update()
            if on_record is not None and "error" not in record:
                on_record(record)

    memory = {task: backends.declared_memory(plugins.get("methods", task[0].method)) for task in tasks}
    try:
        backends.dispatch(tasks, run_task, device=device, n_jobs=n_jobs, on_result=finished, backend=backend,
                          address=address, memory_mb=memory.get)
    finally:
        bar.close()
    return out
